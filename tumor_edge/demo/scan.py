"""One synthetic scan: pick a plane, cut a slice through the sella band, place the class's lesion, finish it.

Three random streams per image keep what may depend on the class (`lesion`, `texture`) apart from what must not
(`realism`). The lesion mask is the pixels its painting changed (not the tissue its mass effect pushed aside),
flipped as the finished image is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumor_edge.demo.anatomy import Anatomy
from tumor_edge.demo.lesions import PAINTERS, Lesion, PituitaryLesion
from tumor_edge.demo.realism import Realism
from tumor_edge.demo.slicing import PLANES, Plane, cut

PLANE_NAMES = tuple(PLANES)
# A pixel belongs to the lesion when painting it changed its intensity by more than this: under one grey level of
# the darkest display window, far above float rounding.
LESION_CHANGE = 0.02
# Slices are cut through the middle of the pituitary mass's extent along the normal, so it shows when present.
_SLICE_BAND = (0.15, 0.85)

SlabFilter = Callable[[str, float], bool]  # (plane, position relative to the sella in mm) -> accept?


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
    if lesion is None:
        return None, 0.0
    for attr in ("rim", "blob", "sellar"):
        blob = getattr(lesion, attr, None)
        if blob is not None:
            return blob.centre, blob.radius
    return None, 0.0


def choose_plane(anat: Anatomy, plane_name: str, tilt: np.ndarray, rng: np.random.Generator,
                 slab: SlabFilter | None = None, tries: int = 500) -> tuple[Plane, PituitaryLesion, float]:
    """Draw the would-be pituitary mass and a slice through it (within `slab` when given)."""
    plane = pituitary = position = None
    for _ in range(tries):
        pituitary = PituitaryLesion.random(anat, rng)
        n = tilt @ np.asarray(PLANES[plane_name][2], dtype=np.float64)
        lo, hi = pituitary.extent(n)
        t = rng.uniform(lo + _SLICE_BAND[0] * (hi - lo), lo + _SLICE_BAND[1] * (hi - lo))
        centre = pituitary.sellar.centre
        origin = centre + (t - centre @ n) * n
        plane = Plane.make(plane_name, origin, tilt)
        position = float((origin - anat.sella) @ n)
        if slab is None or slab(plane_name, position):
            return plane, pituitary, position
    raise RuntimeError(f"no {plane_name} slice found in the requested slab after {tries} tries")


def make_scan(anat: Anatomy, class_name: str, size: int, seed: np.random.SeedSequence,
              slab: SlabFilter | None = None, paint_lesion: bool = True) -> Scan:
    """Render one scan of `class_name` from `anat`; the same seed gives the same pixels. `paint_lesion=False`
    leaves out the lesion's own pixels (not its mass effect)."""
    realism_seed, lesion_seed, texture_seed = seed.spawn(3)
    real_rng = np.random.default_rng(realism_seed)
    lesion_rng = np.random.default_rng(lesion_seed)
    texture_rng = np.random.default_rng(texture_seed)
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


def slab_thresholds(anat: Anatomy, test_fraction: float, seed: int = 0, draws: int = 3000) -> dict[str, float]:
    """Per plane, the slice position beyond which the top `test_fraction` of slices lie (|position| for
    sagittal slices: a symmetric template mirrors left and right)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in PLANE_NAMES:
        positions = []
        for _ in range(draws // len(PLANE_NAMES)):
            realism = Realism.random(32, rng)
            _, _, pos = choose_plane(anat, name, realism.tilt(name), rng)
            positions.append(abs(pos) if name == "sagittal" else pos)
        out[name] = float(np.quantile(positions, 1.0 - test_fraction))
    return out


def slab_filter(thresholds: dict[str, float], split: str) -> SlabFilter:
    """Accept slices of the training side (below the threshold) or the held-out slab (at or above it)."""

    def accept(plane_name: str, position: float) -> bool:
        pos = abs(position) if plane_name == "sagittal" else position
        above = pos >= thresholds[plane_name]
        return above if split == "test" else not above

    return accept
