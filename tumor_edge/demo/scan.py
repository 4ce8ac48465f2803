"""One synthetic scan: pick a plane, cut a slice through the sella band, place the class's lesion, finish it.

Three random streams per image keep what may depend on the class (`lesion`, `texture`) apart from what must not
(`realism`: framing, contrast, noise, flips, size, JPEG quality, drawn identically for every class, so no global
image statistic can tell a classifier the answer). The lesion mask is the pixels its painting changed (not the
tissue its mass effect pushed aside), flipped as the finished image is.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from tumor_edge.demo.anatomy import Anatomy
from tumor_edge.demo.lesions import PAINTERS, Lesion, PituitaryLesion
from tumor_edge.demo.slicing import PLANES, AnatomyVariation, Framing, Plane, cut, rotation
from tumor_edge.runtime.volume import DISPLAY_WHITE_RANGE, FRAME_ZOOM_RANGE

PLANE_NAMES = tuple(PLANES)
# A pixel belongs to the lesion when painting it changed its intensity by more than this: under one grey level of
# the darkest display window, far above float rounding.
LESION_CHANGE = 0.02
# Slices are cut through the middle of the pituitary mass's extent along the normal, so it shows when present.
_SLICE_BAND = (0.15, 0.85)

SlabFilter = Callable[[str, float], bool]  # (plane, position relative to the sella in mm) -> accept?


@dataclass(frozen=True)
class Realism:
    """Every class-independent choice made for one image."""

    tilt_u: float  # degrees the slice plane leans about its column axis
    tilt_v: float  # ... and about its row axis
    angle: float  # in-plane rotation, degrees
    zoom: float  # field of view / brain extent
    shift: tuple[float, float]  # centre offset, fraction of the field of view
    width: int
    height: int
    flip_lr: bool
    white: float  # intensity shown as full white
    gamma: float
    contrast: float
    brightness: float
    bias: float  # strength of the smooth multiplicative bias field
    noise: float  # Rician noise sigma, fraction of full scale
    blur: float  # Gaussian sigma in pixels at 256 px
    jpeg_quality: int
    anatomy: AnatomyVariation

    @classmethod
    def random(cls, size: int, rng: np.random.Generator) -> Realism:
        width = int(round(size * rng.uniform(0.8, 1.25)))
        height = int(round(width * rng.uniform(0.85, 1.18)))
        return cls(
            tilt_u=float(rng.normal(0, 5)), tilt_v=float(rng.normal(0, 5)), angle=float(rng.uniform(-15, 15)),
            zoom=float(rng.uniform(*FRAME_ZOOM_RANGE)), shift=(float(rng.uniform(-0.05, 0.05)),
                                                        float(rng.uniform(-0.05, 0.05))),
            width=max(width, 16), height=max(height, 16), flip_lr=bool(rng.random() < 0.5),
            white=float(rng.uniform(*DISPLAY_WHITE_RANGE)), gamma=float(rng.uniform(0.75, 1.35)),
            contrast=float(rng.uniform(0.85, 1.15)), brightness=float(rng.uniform(-0.04, 0.04)),
            bias=float(rng.uniform(0.0, 0.3)), noise=float(rng.uniform(0.004, 0.04)),
            blur=float(rng.uniform(0.0, 1.0)) if rng.random() < 0.6 else 0.0,
            jpeg_quality=int(rng.integers(70, 97)), anatomy=AnatomyVariation.random(rng),
        )

    def tilt(self, plane_name: str) -> np.ndarray:
        """Rotation that leans a base plane a few degrees off the scanner axes."""
        u, v, _ = (np.asarray(a, dtype=np.float64) for a in PLANES[plane_name])
        return rotation(u, self.tilt_u) @ rotation(v, self.tilt_v)

    def framing(self, anat: Anatomy, plane: Plane) -> Framing:
        """Centre the brain, scale its in-plane extent to the canvas times `zoom`, then shift."""
        corners = np.array(list(itertools.product(*zip(anat.brain_lo, anat.brain_hi))))
        rot = rotation(plane.n, self.angle)
        u, v = rot @ plane.u, rot @ plane.v
        extent = max(np.ptp(corners @ u), np.ptp(corners @ v))
        fov = extent * self.zoom
        spacing = fov / min(self.width, self.height)
        mid = (anat.brain_lo + anat.brain_hi) / 2
        centre = mid - plane.distance(mid) * plane.n  # brain centre, projected onto the plane
        centre = centre + fov * (self.shift[0] * u + self.shift[1] * v)
        return Framing(centre=centre, angle=self.angle, spacing=float(spacing), width=self.width,
                       height=self.height)

    def finish(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Float slice -> displayed 8-bit grey, as a scanner, a viewer and an export would leave it."""
        img = np.clip(image, 0.0, None).astype(np.float32)
        h, w = img.shape
        if self.bias > 0:  # a smooth quadratic field, as receive-coil sensitivity leaves
            a = rng.standard_normal(5)
            y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
            x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
            field = a[0] * x + a[1] * y + 0.5 * (a[2] * x * x + a[3] * y * y + a[4] * x * y)
            img = img * np.exp(self.bias * field / (np.abs(field).max() + 1e-6))
        img = np.clip(img / self.white, 0.0, 1.0) ** self.gamma
        if self.noise > 0:  # Rician: the magnitude of the signal plus complex Gaussian noise
            img = np.sqrt((img + rng.normal(0, self.noise, img.shape)) ** 2 + rng.normal(0, self.noise, img.shape) ** 2)
        if self.blur > 0:
            img = ndi.gaussian_filter(img, self.blur * max(h, w) / 256)
        img = img * self.contrast + self.brightness
        out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return self.place(out)

    def place(self, pixels: np.ndarray) -> np.ndarray:
        """The geometric changes `finish` makes (the left-right flip), alone: the one place the flip happens, so a
        lesion mask lands on the finished image's pixels."""
        return np.ascontiguousarray(pixels[:, ::-1]) if self.flip_lr else pixels

    def encode(self, grey: np.ndarray) -> bytes:
        """JPEG bytes, three identical channels like the public dataset's files."""
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB").save(
            buf, format="JPEG", quality=self.jpeg_quality)
        return buf.getvalue()


@dataclass
class Scan:
    grey: np.ndarray  # uint8 (H, W)
    realism: Realism
    plane: Plane
    position: float  # slice offset from the sella along the plane normal, mm
    lesion: Lesion | None
    lesion_mask: np.ndarray | None = None  # bool (H, W) in the final image's pixels; None without a lesion

    def describe(self, anat: Anatomy) -> dict[str, Any]:
        """Manifest fields: where the slice and the lesion are, in the reference (MNI) frame."""
        row: dict[str, Any] = {"plane": self.plane.name, "slice_mm": round(self.position, 1),
                               "width": self.realism.width, "height": self.realism.height,
                               "jpeg_quality": self.realism.jpeg_quality, "flip_lr": int(self.realism.flip_lr),
                               "angle": round(self.realism.angle, 1)}
        centre, radius = _lesion_centre(self.lesion)
        if centre is not None:
            ref = anat.to_ref(centre)
            row.update(lesion_x=round(float(ref[0]), 1), lesion_y=round(float(ref[1]), 1),
                       lesion_z=round(float(ref[2]), 1), lesion_radius_mm=round(radius, 1))
        return row


def _lesion_centre(lesion: Lesion | None) -> tuple[np.ndarray | None, float]:
    for attr in ("rim", "blob", "sellar"):
        blob = getattr(lesion, attr, None)
        if blob is not None:
            return blob.centre, blob.radius
    return None, 0.0


def choose_plane(anat: Anatomy, plane_name: str, tilt: np.ndarray, rng: np.random.Generator,
                 slab: SlabFilter | None = None) -> tuple[Plane, PituitaryLesion, float]:
    """Draw the would-be pituitary mass and a slice through it (within `slab` when given)."""
    n = tilt @ np.asarray(PLANES[plane_name][2], dtype=np.float64)
    for _ in range(500):
        pituitary = PituitaryLesion.random(anat, rng)
        lo, hi = pituitary.extent(n)
        t = rng.uniform(lo + _SLICE_BAND[0] * (hi - lo), lo + _SLICE_BAND[1] * (hi - lo))
        centre = pituitary.sellar.centre
        origin = centre + (t - centre @ n) * n
        plane = Plane.make(plane_name, origin, tilt)
        position = float((origin - anat.sella) @ n)
        if slab is None or slab(plane_name, position):
            return plane, pituitary, position
    raise RuntimeError(f"no {plane_name} slice found in the requested slab after 500 tries")


def make_scan(anat: Anatomy, class_name: str, size: int, seed: np.random.SeedSequence,
              slab: SlabFilter | None = None, paint_lesion: bool = True) -> Scan:
    """Render one scan of `class_name` from `anat`; the same seed gives the same pixels. `paint_lesion=False`
    leaves out the lesion's own pixels (not its mass effect)."""
    real_rng, lesion_rng, texture_rng = (np.random.default_rng(s) for s in seed.spawn(3))
    plane_name = PLANE_NAMES[int(real_rng.integers(len(PLANE_NAMES)))]
    realism = Realism.random(size, real_rng)
    plane, pituitary, position = choose_plane(anat, plane_name, realism.tilt(plane_name), lesion_rng, slab)
    lesion = PAINTERS[class_name](anat, plane, pituitary, lesion_rng)
    framing = realism.framing(anat, plane)
    sample = cut(anat, plane, framing, real_rng, lesion.mass_effect if lesion is not None else None,
                 realism.anatomy)
    mask = None
    if lesion is not None and paint_lesion:
        before = sample.image.copy()
        lesion.paint(sample, texture_rng)
        mask = realism.place(np.abs(sample.image - before) > LESION_CHANGE)
    grey = realism.finish(sample.image, real_rng)
    return Scan(grey=grey, realism=realism, plane=plane, position=position, lesion=lesion, lesion_mask=mask)


def _slab_position(plane_name: str, position: float) -> float:
    """What the slab split compares: |position| for sagittal slices (a symmetric template mirrors left and right)."""
    return abs(position) if plane_name == "sagittal" else position


def slab_thresholds(anat: Anatomy, test_fraction: float, seed: int) -> dict[str, float]:
    """Per plane, the slab position (`_slab_position`) beyond which the top `test_fraction` of 1000 slices lie."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in PLANE_NAMES:
        positions = [_slab_position(name, choose_plane(anat, name, Realism.random(32, rng).tilt(name), rng)[2])
                     for _ in range(1000)]
        out[name] = float(np.quantile(positions, 1.0 - test_fraction))
    return out


def slab_filter(thresholds: dict[str, float], split: str) -> SlabFilter:
    """Accept slices of the training side (below the threshold) or the held-out slab (at or above it)."""

    def accept(plane_name: str, position: float) -> bool:
        above = _slab_position(plane_name, position) >= thresholds[plane_name]
        return above if split == "test" else not above

    return accept
