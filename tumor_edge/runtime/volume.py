"""Volumes in `classify`: a `Volume` (checked against the caps by its reader) cut into slices the model can
classify, one at a time when the classifier asks, so a run holds the volume plus one batch of slices. The
orientation, framing and intensity rules are `volume_slices`', the ones the demo's training scans were made with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tumor_edge.errors import ConfigError, InputImageError
from tumor_edge.runtime.caps import BLOCK_PIXELS, MAX_FRAMES
from tumor_edge.runtime.postprocess import input_warnings
from tumor_edge.runtime.readers.base import VOLUME, Picture, ReadOptions, Scan, parse_slices
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
