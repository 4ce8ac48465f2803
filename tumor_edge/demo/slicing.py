"""Cutting a 2-D slice out of a prepared volume: plane, in-plane framing, mass effect, and a drawn head.

A slice is a grid of 3-D points (one per pixel) sampled trilinearly, so every geometric change is one resampling
and the lesion painters work in millimetres on the same points. The plane convention is the runtime's, so
`classify` shows a volume's slices as these training scans were cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from tumor_edge.demo.anatomy import GRID_MM, REF_SELLA, Anatomy
from tumor_edge.runtime.volume import PLANES


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit axis."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


@dataclass(frozen=True)
class Plane:
    """An oriented slice plane through a volume: a point on it and its (u, v, n) frame."""

    name: str
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    n: np.ndarray

    @classmethod
    def make(cls, name: str, origin: np.ndarray, tilt: np.ndarray) -> Plane:
        u, v, n = (tilt @ np.asarray(a, dtype=np.float64) for a in PLANES[name])
        return cls(name, np.asarray(origin, dtype=np.float64), u, v, n)

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of points to the plane."""
        return (np.asarray(points) - self.origin) @ self.n


@dataclass(frozen=True)
class Framing:
    """How the plane is laid on the canvas: centre point, in-plane rotation, mm per pixel, canvas size."""

    centre: np.ndarray  # 3-D point on the plane shown at the canvas centre
    angle: float  # degrees, in-plane
    spacing: float  # mm per pixel
    width: int
    height: int

    def axes(self, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
        """3-D directions of the canvas columns and rows."""
        rot = rotation(plane.n, self.angle)
        return rot @ plane.u, rot @ plane.v

    def corner(self, plane: Plane) -> np.ndarray:
        """3-D point of pixel (0, 0)."""
        u, v = self.axes(plane)
        return self.centre - ((self.width - 1) / 2 * u + (self.height - 1) / 2 * v) * self.spacing

    def points(self, plane: Plane) -> np.ndarray:
        """(H, W, 3) voxel coordinates of each pixel centre."""
        u, v = self.axes(plane)
        cols = np.arange(self.width, dtype=np.float64) * self.spacing
        rows = np.arange(self.height, dtype=np.float64) * self.spacing
        return self.corner(plane) + rows[:, None, None] * v + cols[None, :, None] * u


Window = tuple[slice, slice]


@dataclass
class SliceSample:
    """A sampled slice: intensities and brain depth per pixel, with the 3-D point each pixel shows."""

    image: np.ndarray  # float32 (H, W)
    depth: np.ndarray  # float32 (H, W), mm, positive inside the brain
    points: np.ndarray  # (H, W, 3) voxel coords, before any mass-effect warp
    spacing: float
    corner: np.ndarray  # 3-D point of pixel (0, 0)
    u: np.ndarray  # 3-D direction of the columns
    v: np.ndarray  # 3-D direction of the rows
    n: np.ndarray  # plane normal

    def window(self, centre: np.ndarray, reach: float) -> Window | None:
        """The pixel box that a sphere (centre, reach in mm) covers on this slice; None if it misses."""
        rel = np.asarray(centre, dtype=np.float64) - self.corner
        off = float(rel @ self.n)
        if abs(off) >= reach:
            return None
        radius = np.sqrt(reach**2 - off**2) / self.spacing
        col, row = float(rel @ self.u) / self.spacing, float(rel @ self.v) / self.spacing
        h, w = self.image.shape
        r0, r1 = max(int(np.floor(row - radius)), 0), min(int(np.ceil(row + radius)) + 1, h)
        c0, c1 = max(int(np.floor(col - radius)), 0), min(int(np.ceil(col + radius)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def around(self, centre: np.ndarray, reach: float) -> SliceSample | None:
        """A view of the `window` a sphere covers (writing to its image writes to this sample's image), or None."""
        window = self.window(centre, reach)
        if window is None:
            return None
        rows, cols = window
        corner = self.corner + (rows.start * self.v + cols.start * self.u) * self.spacing
        return SliceSample(self.image[window], self.depth[window], self.points[window], self.spacing, corner,
                           self.u, self.v, self.n)


@dataclass(frozen=True)
class MassEffect:
    """Tissue pushed away from a lesion centre (mm), fading over `reach`; the skull does not move."""

    centre: np.ndarray
    reach: float
    strength: float  # 0..~0.4: fraction of the distance to the centre that tissue is displaced by


def _sample(volume: np.ndarray, coords: np.ndarray, cval: float) -> np.ndarray:
    flat = coords.reshape(-1, 3).T
    return ndi.map_coordinates(volume, flat, order=1, mode="constant", cval=cval).reshape(coords.shape[:-1])


def sample_depth(anat: Anatomy, points: np.ndarray) -> np.ndarray:
    return _sample(anat.depth, (points - 0.5) / GRID_MM, cval=-60.0).astype(np.float32)


def warp(points: np.ndarray, depth: np.ndarray, effect: MassEffect) -> np.ndarray:
    """Where each pixel should read tissue from, so tissue near the lesion appears pushed outwards."""
    d = points - effect.centre
    dist = np.linalg.norm(d, axis=-1, keepdims=True)
    pull = effect.strength * np.exp(-((dist / effect.reach) ** 2))
    brain_weight = np.clip(depth / 4.0, 0.0, 1.0)[..., None]
    return points - d * pull * brain_weight


@dataclass(frozen=True)
class HeadShell:
    """Layer thicknesses (mm) and intensities of the scalp and skull drawn around a skull-stripped brain."""

    csf: float
    inner_table: float
    diploe: float
    outer_table: float
    scalp: float
    diploe_level: float
    scalp_level: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> HeadShell:
        return cls(csf=rng.uniform(1.0, 2.5), inner_table=rng.uniform(1.2, 2.2), diploe=rng.uniform(1.5, 3.5),
                   outer_table=rng.uniform(1.2, 2.2), scalp=rng.uniform(4.0, 8.0),
                   diploe_level=rng.uniform(0.15, 0.35), scalp_level=rng.uniform(0.5, 0.75))

    def render(self, outside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Intensity at `outside` mm beyond the brain surface (T1: dark CSF and bone, bright marrow and fat)."""
        edges = np.cumsum([0.0, self.csf, self.inner_table, self.diploe, self.outer_table, self.scalp, 1.5])
        levels = [0.1, 0.03, self.diploe_level, 0.03, self.scalp_level, 0.0]
        # Linear ramps between layer mid-points keep edges soft, as partial-volume voxels are.
        mids = (edges[:-1] + edges[1:]) / 2
        xs = np.concatenate([[0.0], mids, [edges[-1] + 0.5]])
        ys = np.concatenate([[0.1], levels, [0.0]])
        out = np.interp(outside, xs, ys).astype(np.float32)
        texture = 1.0 + 0.1 * smooth_noise(outside.shape, 2.0, rng)
        return np.where(outside > 0, out * texture, 0.0).astype(np.float32)


# Skull-base structures a skull-stripped template lacks, around the sella (reference mm): (centre, semi-axes,
# long-axis direction or None, T1 level). The normal gland is drawn in every image, tumour or not.
SKULL_BASE: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float] | None,
                            float]] = {
    "pituitary gland": ((REF_SELLA[0], REF_SELLA[1], REF_SELLA[2] - 1.0), (6.0, 4.5, 3.5), None, 0.5),
    "right cavernous sinus": ((11.0, 3.0, -29.0), (5.0, 9.0, 6.0), None, 0.3),
    "left cavernous sinus": ((-11.0, 3.0, -29.0), (5.0, 9.0, 6.0), None, 0.3),
    "clivus": ((0.0, -17.0, -45.0), (9.0, 5.0, 19.0), (0.0, -0.57, -0.82), 0.45),
}


def skull_base(anat: Anatomy, sample: SliceSample, read_at: np.ndarray, rng: np.random.Generator) -> None:
    """Draw the skull-base structures into `sample` (outside the brain only)."""
    window = sample.window(anat.sella, 45.0 * anat.scale)
    if window is None:
        return
    ref = anat.to_ref(read_at[window])
    out = np.zeros(ref.shape[:-1], dtype=np.float32)
    for centre, semi, axis, level in SKULL_BASE.values():
        d = ref - np.asarray(centre)
        if axis is not None:  # frame whose third axis runs along the structure
            a = np.asarray(axis) / np.linalg.norm(axis)
            b = np.cross(a, (1.0, 0.0, 0.0))
            b /= np.linalg.norm(b)
            d = np.stack([d @ np.cross(b, a), d @ b, d @ a], axis=-1)
        rho = np.sqrt(np.sum((d / np.asarray(semi)) ** 2, axis=-1))
        out = np.maximum(out, level * np.clip((1.15 - rho) / 0.3, 0.0, 1.0))
    if not out.any():
        return
    out *= 1.0 + 0.1 * smooth_noise(out.shape, 1.5, rng)
    region = sample.image[window]
    region[:] = np.maximum(region, np.where(sample.depth[window] < -0.5, out, 0.0))


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise with features about `sigma` pixels wide (coarse noise, bicubic upsampled)."""
    h, w = shape
    step = max(sigma, 1.0)
    small = rng.standard_normal((max(int(np.ceil(h / step)) + 1, 2), max(int(np.ceil(w / step)) + 1, 2)))
    up = np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))
    return (up - up.mean()) / (up.std() + 1e-6)


@dataclass(frozen=True)
class AnatomyVariation:
    """Class-independent changes to the anatomy itself, so a model learns lesions rather than one brain."""

    deform_mm: float  # amplitude of a smooth random displacement
    deform_scale_mm: float  # its feature size
    curve: tuple[float, ...]  # output levels at CURVE_KNOTS: monotone tissue-contrast remapping
    redraw_head: bool

    CURVE_KNOTS = (0.0, 0.12, 0.35, 0.55, 0.78, 1.0, 3.0)

    @classmethod
    def random(cls, rng: np.random.Generator) -> AnatomyVariation:
        knots = np.asarray(cls.CURVE_KNOTS)
        levels = np.maximum.accumulate(knots * np.exp(rng.normal(0.0, 0.12, len(knots))))
        levels[0] = 0.0
        return cls(deform_mm=float(rng.uniform(0.0, 4.0)), deform_scale_mm=float(rng.uniform(20.0, 45.0)),
                   curve=tuple(float(v) for v in levels), redraw_head=bool(rng.random() < 0.3))

    def displacement(self, shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
        sigma = self.deform_scale_mm / spacing
        return self.deform_mm * np.stack([smooth_noise(shape, sigma, rng) for _ in range(3)], axis=-1)

    def remap(self, image: np.ndarray) -> np.ndarray:
        return np.interp(image, self.CURVE_KNOTS, self.curve).astype(np.float32)


def cut(anat: Anatomy, plane: Plane, framing: Framing, rng: np.random.Generator, mass_effect: MassEffect | None,
        variation: AnatomyVariation) -> SliceSample:
    """Sample the slice: anatomy (varied by `variation`), a drawn head for a skull-stripped volume, and the lesion's
    mass effect; the lesion itself is painted afterwards, on `points`."""
    points = framing.points(plane)
    u, v = framing.axes(plane)
    read_at = points
    if variation.deform_mm > 0:
        read_at = points + variation.displacement(points.shape[:2], framing.spacing, rng)
    depth = sample_depth(anat, read_at)
    sample = SliceSample(np.zeros(points.shape[:-1], np.float32), depth, points, framing.spacing,
                         framing.corner(plane), u, v, plane.n)
    if mass_effect is not None and mass_effect.strength > 0:
        window = sample.window(mass_effect.centre, 2.5 * mass_effect.reach)
        if window is not None:
            read_at = read_at.copy()
            read_at[window] = warp(read_at[window], depth[window], mass_effect)
            sample.depth = depth = sample_depth(anat, read_at)
    image = variation.remap(_sample(anat.image, read_at, cval=0.0).astype(np.float32))
    draw_head = anat.synthetic_head or variation.redraw_head
    if draw_head and not anat.synthetic_head:  # strip the real scalp and skull first
        image = image * np.clip((depth + 1.0) / 2.0, 0.0, 1.0)
    sample.image = image
    if draw_head:
        sample.image = np.maximum(sample.image, HeadShell.random(rng).render(-depth, rng))
        skull_base(anat, sample, read_at, rng)
    return sample
