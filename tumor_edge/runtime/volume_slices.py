"""How a brain volume becomes 2-D slices that look like the training scans: orientation, extent and intensity.

One implementation for the two places that cut volumes: the demo data generator (`tumor_edge.demo`, which samples
tilted planes of a prepared volume) and `classify` on a NIfTI file or a DICOM series (which takes voxel planes).
Both bring the volume to RAS voxel axes, show a plane the way `PLANES` says (radiological: the patient's left on
the image's right; anterior or superior at the top), scale intensities so the brain's 90th percentile sits at
the white-matter level, and display that level at the same grey. Numpy only: the runtime imports this module, so
it must not need scipy, nibabel or the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    out = [0.0, 0.0, 0.0]
    for voxel, (world, _) in enumerate(ornt):
        out[int(world)] = float(spacing[voxel])
    return out[0], out[1], out[2]


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

    def plane(self, values: np.ndarray) -> np.ndarray:
        """What `volume[index(...)]` gave (2-D, axes in array order) as (rows, columns)."""
        return values if self.row_axis < self.col_axis else values.T


# ---- where the brain is, and which slices to classify ----------------------------------------------------------


@dataclass(frozen=True)
class BrainBox:
    """The brain's bounding box in RAS voxel indices (inclusive lo, exclusive hi) and its intensity scale."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    scale: float  # multiply modality values by this for WHITE_MATTER_LEVEL at the brain's 90th percentile


def sample_stride(shape: tuple[int, ...]) -> int:
    """A stride along every axis that reads at most about SAMPLE_VOXELS voxels of a volume."""
    total = int(np.prod(shape[:3], dtype=np.float64))
    return max(1, int(np.ceil((total / SAMPLE_VOXELS) ** (1 / 3))))


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
