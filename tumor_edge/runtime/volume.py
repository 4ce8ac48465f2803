"""Volumes in `classify`: a `Volume` (checked against the caps by its reader) cut into slices the model can
classify, one at a time when the classifier asks, so a run holds the volume plus one batch of slices; the slices'
answers, then one answer for the whole volume (`VolumeSummary`).

The orientation, extent and intensity rules are the ones the demo's training scans were made with (the demo data
generator samples tilted planes of a prepared volume with them): the volume is brought to RAS voxel axes, a plane
is shown the way `PLANES` says (radiological: the patient's left on the image's right; anterior or superior at the
top), and intensities are scaled so the brain's 90th percentile sits at the white-matter level, displayed at the
same grey.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from tumor_edge.runtime.readers import read_scan
from tumor_edge.runtime.readers.base import BLOCK_PIXELS, MAX_FRAMES, VOLUME, Picture, ReadOptions, Scan, parse_slices

# plane -> (column direction u, row direction v, normal n) in RAS voxel axes, radiological display: the
# patient's left on the image's right, anterior (axial) or superior (coronal, sagittal) at the top.
PLANES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "axial": ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    "coronal": ((-1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "sagittal": ((0, -1, 0), (0, 0, -1), (1, 0, 0)),
}
AXES = tuple(PLANES)

WHITE_MATTER_LEVEL = 0.78  # the brain's BRAIN_PERCENTILE intensity is scaled to this
BRAIN_PERCENTILE = 90.0
# The demo draws the grey shown as full white from DISPLAY_WHITE_RANGE (and gamma around 1) per scan; a real
# volume is shown at the middle of that draw, so white matter lands where it did in the training scans.
DISPLAY_WHITE_RANGE = (1.0, 1.4)
DISPLAY_WHITE = sum(DISPLAY_WHITE_RANGE) / 2
# The demo frames the brain's larger in-plane extent times a zoom drawn from FRAME_ZOOM_RANGE (a field of view a
# little larger than the brain); a real volume's slices are cropped at the middle of that draw around the brain.
FRAME_ZOOM_RANGE = (1.12, 1.45)
FRAME_ZOOM = sum(FRAME_ZOOM_RANGE) / 2
MAX_CANVAS_PIXELS = 16_000_000  # a slice's framed canvas (float32): absurd voxel sizes cannot make it huge
# A slice "contains brain" when its foreground area is at least this fraction of the largest slice's.
BRAIN_AREA_FRACTION = 0.1
FOREGROUND_FRACTION = 0.1  # tissue: above this fraction of the volume's 99th intensity percentile
SAMPLE_VOXELS = 1 << 21  # voxels read (strided) to find the brain and its intensity level


def white_matter_scale(brain_values: np.ndarray) -> float:
    """The factor that brings the brain's BRAIN_PERCENTILE intensity to WHITE_MATTER_LEVEL (0 when the brain
    has no positive intensity)."""
    if brain_values.size == 0:
        return 0.0
    level = float(np.percentile(brain_values, BRAIN_PERCENTILE))
    return WHITE_MATTER_LEVEL / level if level > 0 else 0.0


def display_uint8(values: np.ndarray, scale: float) -> np.ndarray:
    """Intensities -> the 8-bit grey the training scans show: white matter at WHITE_MATTER_LEVEL / DISPLAY_WHITE
    of full white; NaN and infinities black."""
    out = np.asarray(values, dtype=np.float32) * np.float32(scale * 255.0 / DISPLAY_WHITE)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---- orientation --------------------------------------------------------------------------------------------


def closest_ras(direction: np.ndarray) -> np.ndarray:
    """(3, 2) int: for each voxel axis, the RAS axis it runs closest to and +1/-1 for along or against it.

    `direction`'s columns are the world (RAS, mm) step of each voxel axis. As nibabel's `io_orientation`: the
    closest shear-free rotation (polar decomposition), then the strongest voxel axes pick their world axis first."""
    rzs = np.asarray(direction, dtype=np.float64)[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    if not np.all(np.isfinite(rzs)) or np.any(zooms == 0):
        raise ValueError("the voxel-to-world matrix has a zero or non-finite axis")
    p, s, qt = np.linalg.svd(rzs / zooms)
    if s.min() <= s.max() * 3 * np.finfo(np.float64).eps:
        raise ValueError("the voxel-to-world matrix is singular (two voxel axes point the same way)")
    r = p @ qt
    ornt = np.zeros((3, 2), dtype=np.int64)
    free = np.ones((3, 3), dtype=bool)  # [world, voxel] still available
    for voxel in np.argsort(np.min(-(r**2), axis=0), kind="stable"):
        column = np.where(free[:, voxel], np.abs(r[:, voxel]), -1.0)
        world = int(np.argmax(column))
        ornt[voxel] = (world, 1 if r[world, voxel] >= 0 else -1)
        free[world, :] = False
        free[:, voxel] = False
    return ornt


def to_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """A view of `array` (first three axes: voxel axes) with its axes in RAS order and direction (flips and a
    transpose: no copy), as nibabel's `apply_orientation` does."""
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            array = np.flip(array, axis=axis)
    order = list(np.argsort(ornt[:, 0])) + list(range(3, array.ndim))
    return array.transpose(order)


def ras_spacing(spacing: tuple[float, float, float], ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) in RAS order."""
    x, y, z = (float(spacing[voxel]) for voxel in np.argsort(ornt[:, 0]))  # the voxel axis along each RAS axis
    return x, y, z


@dataclass(frozen=True)
class PlaneAxes:
    """How a plane of `PLANES` cuts a RAS voxel array: the normal's axis, and which array axis (and direction)
    runs along the image's rows and columns."""

    normal: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool

    @classmethod
    def of(cls, plane: str) -> PlaneAxes:
        u, v, n = (np.asarray(a) for a in PLANES[plane])
        return cls(int(np.argmax(np.abs(n))), int(np.argmax(np.abs(v))), bool(v[np.argmax(np.abs(v))] < 0),
                   int(np.argmax(np.abs(u))), bool(u[np.argmax(np.abs(u))] < 0))

    def index(self, position: int, rows: slice = slice(None), cols: slice = slice(None)) -> tuple[slice | int, ...]:
        """The array index of one plane (rows, columns in array order, before display flips)."""
        index: list[slice | int] = [slice(None)] * 3
        index[self.normal] = position
        index[self.row_axis] = rows
        index[self.col_axis] = cols
        return tuple(index)

    def display(self, image: np.ndarray) -> np.ndarray:
        """A plane as (rows along `row_axis`, columns along `col_axis`) -> flipped as the plane's convention
        says, so the patient's left is on the image's right and anterior or superior at the top."""
        if self.row_flip:
            image = image[::-1]
        if self.col_flip:
            image = image[:, ::-1]
        return image


# ---- where the brain is, and which slices to classify ----------------------------------------------------------


@dataclass(frozen=True)
class BrainBox:
    """The brain's bounding box in RAS voxel indices (inclusive lo, exclusive hi) and its intensity scale."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    scale: float  # multiply modality values by this for WHITE_MATTER_LEVEL at the brain's 90th percentile


def find_brain(sample: np.ndarray, stride: int, shape: tuple[int, int, int]) -> BrainBox | None:
    """From a strided sample of the volume's modality values (RAS): the foreground (above FOREGROUND_FRACTION
    of the 99th percentile, the demo's rule for a skull-stripped brain), its bounding box (the slices whose
    foreground area reaches BRAIN_AREA_FRACTION of the largest) and the white-matter scale. None when nothing
    stands out of the background."""
    finite = np.isfinite(sample)
    positive = sample[finite & (sample > 0)]
    if positive.size < 8:
        return None
    top = float(np.percentile(positive, 99))
    if top <= 0:
        return None
    mask = finite & (sample > FOREGROUND_FRACTION * top)
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = mask.sum(axis=others).astype(np.float64)
        fraction = counts / max(counts.max(), 1.0)
        inside = np.flatnonzero(fraction >= BRAIN_AREA_FRACTION)
        lo.append(min(int(inside[0]) * stride, shape[axis] - 1))
        hi.append(min(int(inside[-1]) * stride + stride, shape[axis]))
    return BrainBox((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]), white_matter_scale(sample[mask]))


def pick_slices(choice: str | int, lo: int, hi: int) -> list[int]:
    """Slice indices along the normal within the brain's extent [lo, hi): the middle one, every one, or N
    spread evenly from end to end (fewer when the extent has fewer slices)."""
    if hi <= lo:
        return []
    if choice == "all":
        return list(range(lo, hi))
    if choice == "middle" or int(choice) == 1:  # a number is at least 1: `parse_slices` checked it
        return [(lo + hi - 1) // 2]
    return sorted({int(round(x)) for x in np.linspace(lo, hi - 1, int(choice))})


def frame_window(box: BrainBox, axes: PlaneAxes, spacing: tuple[float, float, float],
                 shape: tuple[int, int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row range, column range) in array indices of a square field of view FRAME_ZOOM times the brain's larger
    in-plane extent, centred on the brain: ranges may run past the array (the slice is padded black there)."""
    extents = [(box.hi[a] - box.lo[a]) * spacing[a] for a in (axes.row_axis, axes.col_axis)]
    side_mm = max(max(extents), 1e-6) * FRAME_ZOOM
    out = []
    for axis in (axes.row_axis, axes.col_axis):
        centre = (box.lo[axis] + box.hi[axis]) / 2
        half = side_mm / spacing[axis] / 2
        start = int(np.floor(centre - half))
        out.append((start, max(int(np.ceil(centre + half)), start + 1)))
    return out[0], out[1]


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


def usable_scaling(slope: float | None, intercept: float | None) -> tuple[float, float]:
    """A header's (slope, intercept) from stored to modality values, as DICOM and NIfTI define them: a slope that
    is absent, 0 or not finite means no scaling (1), an absent or non-finite intercept none (0)."""
    return (float(slope) if slope is not None and slope != 0 and np.isfinite(slope) else 1.0,
            float(intercept) if intercept is not None and np.isfinite(intercept) else 0.0)


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
    total = int(np.prod(volume.shape, dtype=np.float64))
    stride = max(1, int(np.ceil((total / SAMPLE_VOXELS) ** (1 / 3))))  # reads at most about SAMPLE_VOXELS voxels
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
    if np.issubdtype(volume.stored.dtype, np.integer) or (stride == 1 and np.all(np.isfinite(sample))):
        return  # integers are finite; an unstrided sample is the whole volume
    if volume.stored.flags.c_contiguous:
        flat = volume.stored.reshape(-1)
        blocks = (flat[start:start + BLOCK_PIXELS] for start in range(0, flat.size, BLOCK_PIXELS))
    else:
        blocks = (volume.stored[x] for x in range(volume.shape[0]))
    bad = sum(int(block.size - np.count_nonzero(np.isfinite(block))) for block in blocks)
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
            part = volume.values(axes.index(position, rows, cols))  # 2-D, its axes in array order
            part = part if axes.row_axis < axes.col_axis else part.T  # as (rows, columns)
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
# slices whose own label is that class make up at least MIN_SUPPORT of the labelled slices (one slice always
# suffices when at most 1 / MIN_SUPPORT slices were classified); otherwise it is `notumor`. A tumour seen in a
# few slices of many therefore needs a few slices' agreement, not one stray slice. Research use only.

NO_TUMOUR = "notumor"
MIN_SUPPORT = 0.2


def summarise(source: str, axis: str, classes: Sequence[str], rows: Sequence[tuple[int, dict[str, float], str | None]],
              slice_count: int, warnings: Sequence[str] = ()) -> VolumeSummary:
    """`rows`: (slice index, probabilities, label or None when abstained) for every slice classified."""
    indices = tuple(index for index, _, _ in rows)
    labelled = [(index, probs, label) for index, probs, label in rows if label is not None]
    rule = (f"the tumour class with the highest mean probability when at least {MIN_SUPPORT:.0%} of the "
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
        if support >= max(1, math.ceil(MIN_SUPPORT * len(labelled) - 1e-9)) or label is None:
            label = best
    supporting = tuple(index for index, _, lab in labelled if lab == label)
    return VolumeSummary(source, axis, label, probabilities, indices, supporting, slice_count, tuple(warnings),
                         rule)


# Classifying one volume: a Failure, never an exception, when it cannot be read (after the rows already given,
# when it breaks half-way), so a batch goes on. Memory: the volume as stored, plus one batch of model-sized slices.

log = logging.getLogger("tumor_edge.input")


def classify_volume(model: Model, path: str | Path, axis: str = "axial", slices: str | int = "middle",
                    batch_size: int = 16, abstain: bool = False,
                    on_pixels: OnPixels | None = None) -> Iterator[Prediction | Failure | VolumeSummary]:
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
    plane = scan.axis or axis
    stream = iter(scan.pictures)
    warned = 0
    try:
        while batch := list(itertools.islice(stream, batch_size)):
            seen = np.stack([resize_rgb(s.image, model.preprocessing) for s in batch])
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
    yield summarise(source, plane, model.classes, rows, scan.count, notes)
