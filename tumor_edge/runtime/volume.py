"""Volumes in `classify`: a `Volume` (checked against the caps by its reader) cut into slices the model can
classify, one at a time when the classifier asks, so a run holds the volume plus one batch of slices; the slices'
answers, then one answer for the whole volume (`VolumeSummary`). The orientation, framing and intensity rules are
`volume_slices`', the ones the demo's training scans were made with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from tumor_edge.errors import ConfigError, InputImageError, ModelError
from tumor_edge.runtime.postprocess import (
    Failure,
    Model,
    OnPixels,
    Prediction,
    VolumeSummary,
    failure_of,
    input_warnings,
)
from tumor_edge.runtime.preprocess import resize_rgb
from tumor_edge.runtime.readers.base import BLOCK_PIXELS, MAX_FRAMES, VOLUME, Picture, ReadOptions, Scan, parse_slices
from tumor_edge.runtime.readers.registry import read_scan
from tumor_edge.runtime.volume_slices import (
    AXES,
    MAX_CANVAS_PIXELS,
    BrainBox,
    PlaneAxes,
    display_uint8,
    find_brain,
    frame_window,
    pick_slices,
    sample_stride,
)


@dataclass
class Volume:
    """A volume ready to slice: stored values in RAS voxel order, `values = stored * slope + intercept` (slope
    and intercept broadcast against `stored`: per file for a DICOM series), voxel sizes in mm (RAS order)."""

    source: str
    stored: np.ndarray  # (X, Y, Z) in RAS order; a view of what was read
    spacing: tuple[float, float, float]
    slope: np.ndarray | float = 1.0
    intercept: np.ndarray | float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings found while reading (logged once per volume)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.stored.shape[0], self.stored.shape[1], self.stored.shape[2]

    def values(self, index: tuple) -> np.ndarray:
        """Modality values (float32) of `stored[index]`."""
        part = self.stored[index].astype(np.float32)
        slope, intercept = (np.broadcast_to(np.asarray(v, dtype=np.float32), self.stored.shape)[index]
                            for v in (self.slope, self.intercept))
        return part * slope + intercept


@dataclass
class SlicePlan:
    """Which slices of a volume `iter_slices` will make, decided from the volume before any slice is cut."""

    volume: Volume
    axis: str
    indices: list[int]
    box: BrainBox

    @property
    def count(self) -> int:
        return self.volume.shape[PlaneAxes.of(self.axis).normal]


def plan_slices(volume: Volume, axis: str, slices: str | int) -> SlicePlan:
    """Find the brain (strided sample: bounded time and memory) and choose the slices to classify."""
    if axis not in AXES:
        raise ConfigError(f"axis must be one of {', '.join(AXES)}, not {axis!r}")
    slices = parse_slices(slices)
    stride = sample_stride(volume.shape)
    sample = volume.values((slice(None, None, stride),) * 3)
    _check_finite(volume, sample, stride)
    box = find_brain(sample, stride, volume.shape)
    del sample
    if box is None:
        raise InputImageError("volume holds nothing but background (no intensity stands out): nothing to "
                              "classify", volume.source)
    axes = PlaneAxes.of(axis)
    (r0, r1), (c0, c1) = frame_window(box, axes, volume.spacing, volume.shape)
    if (r1 - r0) * (c1 - c0) > MAX_CANVAS_PIXELS:
        raise InputImageError(f"voxel sizes {tuple(round(s, 4) for s in volume.spacing)} mm make {axis} slices of "
                              f"{c1 - c0}x{r1 - r0} voxels (limit {MAX_CANVAS_PIXELS} pixels): a corrupt header?",
                              volume.source)
    indices = pick_slices(slices, box.lo[axes.normal], box.hi[axes.normal])
    if len(indices) > MAX_FRAMES:
        raise InputImageError(f"{len(indices)} {axis} slices contain brain; classifying all of them is limited "
                              f"to {MAX_FRAMES} (ask for a number of slices)", volume.source)
    return SlicePlan(volume, axis, indices, box)


def _check_finite(volume: Volume, sample: np.ndarray, stride: int) -> None:
    """All-NaN volumes are refused; some non-finite voxels are shown black with a warning (counted over the
    whole volume in blocks when the sample finds any)."""
    if np.issubdtype(volume.stored.dtype, np.integer):
        return
    if np.all(np.isfinite(sample)) and stride == 1:
        return
    flat = volume.stored.reshape(-1) if volume.stored.flags.c_contiguous else None
    bad = total = 0
    if flat is not None:
        for start in range(0, flat.size, BLOCK_PIXELS):
            block = flat[start:start + BLOCK_PIXELS]
            bad += int(block.size - np.count_nonzero(np.isfinite(block)))
        total = flat.size
    else:
        for x in range(volume.shape[0]):
            plane = volume.stored[x]
            bad += int(plane.size - np.count_nonzero(np.isfinite(plane)))
        total = volume.stored.size
    if bad == total:
        raise InputImageError("volume holds no finite voxel values (all NaN or infinite)", volume.source)
    if bad:
        volume.notes.append(f"{bad} of {total} voxels are NaN or infinite; they are shown black")


def iter_slices(plan: SlicePlan) -> Iterator[Picture]:
    """The planned slices, one at a time: cropped to the brain's framing, scaled for display, as 8-bit RGB at the
    framing's size (the classifier resizes them to the model's, as it does any picture)."""
    volume, axes = plan.volume, PlaneAxes.of(plan.axis)
    (r0, r1), (c0, c1) = frame_window(plan.box, axes, volume.spacing, volume.shape)
    n_rows, n_cols = volume.shape[axes.row_axis], volume.shape[axes.col_axis]
    for position in plan.indices:
        canvas = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)  # rows along row_axis, columns col_axis
        rows = slice(max(r0, 0), min(r1, n_rows))
        cols = slice(max(c0, 0), min(c1, n_cols))
        warnings: list[str] = []
        if rows.start < rows.stop and cols.start < cols.stop:
            part = axes.plane(volume.values(axes.index(position, rows, cols)))
            canvas[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0] = part
            warnings = input_warnings(display_uint8(part, plan.box.scale), content_only=True)
        grey = display_uint8(axes.display(canvas), plan.box.scale)
        image = Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")
        yield Picture(image, position, plan.count, plan.axis, tuple(warnings))


def volume_scan(volume: Volume, options: ReadOptions, reader: str) -> Scan:
    """A volume reader's `Scan`: the slices `options` asks for, planned now (a volume that cannot be sliced fails
    here, before any slice is cut) and cut one at a time as they are taken."""
    plan = plan_slices(volume, options.axis, options.slices)
    return Scan(volume.source, reader, VOLUME, iter_slices(plan), plan.count, plan.axis, volume.notes)


# One answer for a whole volume from its slices' answers, with the slices that support it.
#
# The rule (documented in the README): over the slices given a label, take each class's mean probability; the
# volume's class is the tumour class (any class but `notumor`) with the highest mean probability, provided the
# slices whose own label is that class make up at least `min_fraction` of the labelled slices (one slice always
# suffices when at most 1 / min_fraction slices were classified); otherwise it is `notumor`. A tumour seen in a
# few slices of many therefore needs a few slices' agreement, not one stray slice. Research use only.

NO_TUMOUR = "notumor"


@dataclass(frozen=True)
class VolumeVote:
    """How many of the labelled slices must carry the tumour class for the volume to get it."""

    min_fraction: float = 0.2

    def needed(self, labelled: int) -> int:
        return max(1, math.ceil(self.min_fraction * labelled - 1e-9))


def summarise(source: str, axis: str, classes: Sequence[str], rows: Sequence[tuple[int, dict[str, float], str | None]],
              slice_count: int, warnings: Sequence[str] = (), vote: VolumeVote | None = None) -> VolumeSummary:
    """`rows`: (slice index, probabilities, label or None when abstained) for every slice classified."""
    vote = vote or VolumeVote()
    indices = tuple(index for index, _, _ in rows)
    labelled = [(index, probs, label) for index, probs, label in rows if label is not None]
    rule = (f"the tumour class with the highest mean probability when at least {vote.min_fraction:.0%} of the "
            f"labelled slices carry it, else {NO_TUMOUR}")
    if not labelled:
        return VolumeSummary(source, axis, None, {c: 0.0 for c in classes}, indices, (), slice_count,
                             tuple(warnings), rule)
    mean = np.mean([[probs[c] for c in classes] for _, probs, _ in labelled], axis=0)
    probabilities = {c: float(p) for c, p in zip(classes, mean)}
    tumours = [c for c in classes if c != NO_TUMOUR]
    label = NO_TUMOUR if NO_TUMOUR in classes else None
    if tumours:
        best = max(tumours, key=lambda c: probabilities[c])
        support = sum(1 for _, _, lab in labelled if lab == best)
        if support >= vote.needed(len(labelled)) or label is None:
            label = best
    supporting = tuple(index for index, _, lab in labelled if lab == label)
    return VolumeSummary(source, axis, label, probabilities, indices, supporting, slice_count, tuple(warnings),
                         rule)


# Classifying one volume: a Failure, never an exception, when it cannot be read (after the rows already given,
# when it breaks half-way), so a batch goes on. Memory: the volume as stored, plus one batch of model-sized slices.

log = logging.getLogger("tumor_edge.input")

VolumeResult = Union[Prediction, Failure, VolumeSummary]


def classify_volume(model: Model, path: str | Path, axis: str = "axial", slices: str | int = "middle",
                    batch_size: int = 16, abstain: bool = False, vote: VolumeVote | None = None,
                    on_pixels: OnPixels | None = None) -> Iterator[VolumeResult]:
    """Slice rows, then the summary (or a Failure). `abstain`: slices with warnings get no label and do not
    count in the summary. `on_pixels(prediction, pixels)`: as in the pipeline, for each classified slice."""
    source = str(path)
    rows: list[tuple[int, dict[str, float], str | None]] = []
    try:
        scan = read_scan(path, ReadOptions(axis=axis, slices=slices))
    except Exception as err:  # TumorEdgeError, MemoryError, a reader bug on a hostile file: one line
        yield failure_of(source, err, "reading the volume")
        return
    for note in scan.notes:
        log.warning("%s: %s", source, note)
    spec = model.preprocessing
    plane = scan.axis or axis
    stream = iter(scan.pictures)
    warned = 0
    try:
        while True:
            batch = [s for _, s in zip(range(batch_size), stream)]
            if not batch:
                break
            seen = np.stack([resize_rgb(s.image, spec) for s in batch])
            results = model.predictions(seen, [(source, s.index, s.count) for s in batch], abstain=abstain,
                                        notes=[s.warnings for s in batch])
            del batch
            for result, pixels in zip(results, seen):
                if result.ok:
                    result = dataclasses.replace(result, axis=plane)
                    warned += bool(result.warnings)
                    rows.append((result.frame, result.probabilities, None if result.abstained else result.label))
                    if on_pixels is not None:
                        result = on_pixels(result, pixels)
                yield result
    except ModelError:
        raise  # the model, not this file, is at fault: the run stops as it does for images
    except Exception as err:
        yield failure_of(source, err, "reading the volume")
        return
    finally:
        scan.close()
    notes = list(scan.notes)
    if warned:
        notes.append(f"{warned} of {len(rows)} slices have warnings")
    yield summarise(source, plane, model.classes, rows, scan.count, notes, vote)
