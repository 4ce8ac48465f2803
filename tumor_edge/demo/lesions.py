"""Simulated lesions, placed and drawn the way each tumour type presents on contrast-enhanced T1.

Lesions are 3-D shapes evaluated on each pixel's 3-D point, so a slice shows a true cross-section. A would-be
pituitary mass is drawn for every class and the slice cut through it, so where a slice was taken does not give
the class away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tumor_edge.demo.anatomy import Anatomy
from tumor_edge.demo.slicing import MassEffect, Plane, SliceSample, sample_depth, smooth_noise


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 below edge0, 1 above edge1 (or the reverse when edge0 > edge1), smooth in between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True)
class Blob:
    """An irregular ellipsoid: radius modulated by a few smooth angular harmonics."""

    centre: np.ndarray
    radius: float
    rot: np.ndarray
    axes: np.ndarray
    freqs: np.ndarray
    amps: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, centre: np.ndarray, radius: float, rng: np.random.Generator, irregularity: float,
               elongation: float = 0.2, harmonics: int = 4) -> Blob:
        axes = np.exp(rng.uniform(-elongation, elongation, 3))
        axes = axes / np.prod(axes) ** (1 / 3)
        freqs = rng.standard_normal((harmonics, 3))
        freqs *= (rng.uniform(1.5, 4.0, harmonics) / np.linalg.norm(freqs, axis=1))[:, None]
        amps = irregularity * rng.uniform(0.3, 1.0, harmonics) / np.sqrt(harmonics)
        return cls(np.asarray(centre, dtype=np.float64), float(radius), random_rotation(rng), axes, freqs, amps,
                   rng.uniform(0, 2 * np.pi, harmonics))

    def rho(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the boundary."""
        q = ((points - self.centre) @ self.rot.T) / self.axes
        rad = np.linalg.norm(q, axis=-1)
        direction = q / np.maximum(rad, 1e-6)[..., None]
        mod = 1.0 + np.cos(direction @ self.freqs.T + self.phases) @ self.amps
        return rad / (self.radius * np.maximum(mod, 0.4))

    @property
    def bound(self) -> float:
        """Radius of a sphere about `centre` that contains the blob."""
        return self.radius * float(self.axes.max()) * (1 + float(self.amps.sum()))


def _bounding(blobs: list[Blob]) -> tuple[np.ndarray, float]:
    """A sphere (centre, radius) around several blobs, with a 2 mm margin."""
    centre = blobs[0].centre
    return centre, max(float(np.linalg.norm(b.centre - centre)) + b.bound for b in blobs) + 2.0


def _inside(rho: np.ndarray, spacing: float, radius: float) -> np.ndarray:
    """Soft 0..1 occupancy, a one-pixel edge."""
    soft = max(spacing / radius, 0.02)
    return smoothstep(1.0 + soft, 1.0 - soft, rho)


def _near_plane(plane: Plane, sites: np.ndarray, r: float) -> np.ndarray:
    """Indices of the sites within 0.4 r of the plane, else of the 50 nearest."""
    dist = np.abs(plane.distance(sites))
    near = np.flatnonzero(dist < 0.4 * r)
    return near if len(near) else np.argsort(dist)[:50]


class Lesion(Protocol):
    mass_effect: MassEffect | None

    def paint(self, sample: SliceSample, rng: np.random.Generator) -> None: ...


@dataclass
class PituitaryLesion:
    """A sellar mass (and, for a macroadenoma, a suprasellar lobe): drawn for every image to place the slice."""

    sellar: Blob
    suprasellar: Blob | None
    level: float
    cyst: Blob | None
    mass_effect: MassEffect | None = None

    @classmethod
    def random(cls, anat: Anatomy, rng: np.random.Generator) -> PituitaryLesion:
        s = anat.scale
        centre = anat.sella + rng.normal(0, [1.0, 1.5, 1.5]) * s
        r1 = rng.uniform(8.0, 14.0) * s
        sellar = Blob.random(centre, r1, rng, irregularity=0.08, elongation=0.15)
        supra = None
        top = centre
        if rng.random() < 0.65:
            top = centre + np.array([rng.normal(0, 1.0), rng.normal(0, 1.5), rng.uniform(6.0, 15.0) * s])
            supra = Blob.random(top, r1 * rng.uniform(0.6, 1.0), rng, irregularity=0.12, elongation=0.2)
        cyst = None
        if rng.random() < 0.15:
            cyst = Blob.random(centre + rng.normal(0, 1.0, 3), r1 * rng.uniform(0.25, 0.45), rng, irregularity=0.1)
        effect = MassEffect(top, reach=1.6 * r1, strength=rng.uniform(0.1, 0.3)) if supra is not None else None
        return cls(sellar, supra, rng.uniform(1.1, 1.4), cyst, effect)

    @property
    def blobs(self) -> list[Blob]:
        return [self.sellar] + ([self.suprasellar] if self.suprasellar is not None else [])

    def extent(self, normal: np.ndarray) -> tuple[float, float]:
        """Conservative (lo, hi) of the mass's projection on a unit normal, relative to the origin."""
        centres = [float(b.centre @ normal) for b in self.blobs]
        return (min(c - b.bound for c, b in zip(centres, self.blobs)),
                max(c + b.bound for c, b in zip(centres, self.blobs)))

    def paint(self, sample: SliceSample, rng: np.random.Generator) -> None:
        sample = sample.around(*_bounding(self.blobs))
        if sample is None:
            return
        rho = np.minimum.reduce([b.rho(sample.points) for b in self.blobs])
        inside = _inside(rho, sample.spacing, self.sellar.radius)
        tex = smooth_noise(sample.image.shape, max(1.5 / sample.spacing, 0.6), rng)
        value = self.level * (1.0 + 0.08 * tex)
        if self.cyst is not None:
            cyst = _inside(self.cyst.rho(sample.points), sample.spacing, self.cyst.radius)
            value = value * (1 - cyst) + cyst * 0.25
        sample.image[:] = sample.image * (1 - inside) + inside * value


@dataclass
class GliomaLesion:
    """Enhancing irregular rim, necrotic core, hypointense oedema; confined to the brain."""

    rim: Blob
    core: Blob
    oedema: Blob
    rim_level: float
    core_level: float
    oedema_drop: float
    mass_effect: MassEffect | None = None

    def paint(self, sample: SliceSample, rng: np.random.Generator) -> None:
        sample = sample.around(*_bounding([self.oedema, self.rim, self.core]))
        if sample is None:
            return
        pts = sample.points
        brain = smoothstep(0.0, 2.0, sample.depth)
        shape = sample.image.shape
        tex = smooth_noise(shape, max(1.2 / sample.spacing, 0.6), rng)
        oedema = _inside(self.oedema.rho(pts), sample.spacing * 3, self.oedema.radius) * brain
        img = sample.image * (1 - self.oedema_drop * oedema * (1 + 0.15 * tex))
        rim = _inside(self.rim.rho(pts), sample.spacing, self.rim.radius) * brain
        core = _inside(self.core.rho(pts), sample.spacing, self.core.radius)
        rim_value = self.rim_level * (1 + 0.18 * tex)
        core_value = self.core_level * (1 + 0.25 * smooth_noise(shape, max(2.0 / sample.spacing, 0.6), rng))
        lesion_value = rim_value * (1 - core) + core_value * core
        sample.image[:] = img * (1 - rim) + rim * lesion_value


def place_glioma(anat: Anatomy, plane: Plane, pituitary: PituitaryLesion, rng: np.random.Generator) -> GliomaLesion:
    r = rng.uniform(14.0, 28.0) * anat.scale
    near = anat.glioma_sites[_near_plane(plane, anat.glioma_sites, r)]
    # Deep enough that the enhancing mass stays mostly inside the brain.
    depth = sample_depth(anat, near)
    deep = near[depth >= min(0.6 * r, 14.0)]
    pool = deep if len(deep) else near
    centre = pool[rng.integers(len(pool))]
    rim = Blob.random(centre, r, rng, irregularity=0.5, elongation=0.3, harmonics=6)
    core = Blob.random(centre + rng.normal(0, 0.15 * r, 3), r * rng.uniform(0.4, 0.75), rng,
                       irregularity=0.5, elongation=0.3, harmonics=6)
    oedema = Blob.random(centre + rng.normal(0, 0.2 * r, 3), r * rng.uniform(1.5, 2.3), rng,
                         irregularity=0.6, elongation=0.35, harmonics=7)
    effect = MassEffect(centre, reach=1.8 * r, strength=rng.uniform(0.1, 0.3))
    return GliomaLesion(rim, core, oedema, rim_level=rng.uniform(1.15, 1.5), core_level=rng.uniform(0.1, 0.3),
                        oedema_drop=rng.uniform(0.25, 0.5), mass_effect=effect)


@dataclass
class MeningiomaLesion:
    """A dural-based, well-circumscribed, homogeneously enhancing mass with a flat base and a dural tail."""

    blob: Blob
    base: np.ndarray
    normal: np.ndarray  # outward, from the brain towards the dura
    level: float
    cleft: float
    tail_length: float
    tail_level: float
    mass_effect: MassEffect | None = None

    def paint(self, sample: SliceSample, rng: np.random.Generator) -> None:
        centre, reach = _bounding([self.blob])
        sample = sample.around(centre, max(reach * 1.2, float(np.linalg.norm(self.base - centre)) + self.tail_length))
        if sample is None:
            return
        pts = sample.points
        height = (pts - self.base) @ self.normal  # > 0 beyond the dura
        dural_side = smoothstep(2.0 + sample.spacing, 2.0 - sample.spacing, height)
        rho = self.blob.rho(pts)
        inside = _inside(rho, sample.spacing, self.blob.radius) * dural_side
        tex = smooth_noise(sample.image.shape, max(1.5 / sample.spacing, 0.6), rng)
        img = sample.image
        if self.cleft > 0:
            ring = smoothstep(1.0, 1.04, rho) * smoothstep(1.16, 1.08, rho) * dural_side
            img = img * (1 - self.cleft * ring)
        if self.tail_length > 0:
            lateral = np.linalg.norm((pts - self.base) - height[..., None] * self.normal, axis=-1)
            layer = smoothstep(1.8, 0.6, np.abs(height - 1.0))
            tail = layer * smoothstep(self.tail_length, self.blob.radius * 0.6, lateral)
            img = np.maximum(img, tail * self.tail_level)
        value = self.level * (1 + 0.04 * tex)
        sample.image[:] = img * (1 - inside) + inside * value


def place_meningioma(anat: Anatomy, plane: Plane, pituitary: PituitaryLesion,
                     rng: np.random.Generator) -> MeningiomaLesion:
    r = rng.uniform(12.0, 26.0) * anat.scale
    falx_near = anat.falx_sites[np.abs(plane.distance(anat.falx_sites)) < 0.4 * r]
    if len(falx_near) and rng.random() < 0.3:
        base = falx_near[rng.integers(len(falx_near))]
        side = 1.0 if rng.random() < 0.5 else -1.0  # the hemisphere the mass grows into
        normal = np.array([-side, 0.0, 0.0])
    else:
        near = _near_plane(plane, anat.convexity_sites, r)
        k = near[rng.integers(len(near))]
        base, normal = anat.convexity_sites[k], anat.convexity_normals[k]
    centre = base - normal * r * rng.uniform(0.2, 0.6)
    blob = Blob.random(centre, r, rng, irregularity=0.08, elongation=0.2, harmonics=3)
    effect = MassEffect(centre, reach=1.7 * r, strength=rng.uniform(0.15, 0.35))
    has_tail = rng.random() < 0.6
    return MeningiomaLesion(blob, base, normal, level=rng.uniform(1.15, 1.45),
                            cleft=rng.uniform(0.3, 0.7) if rng.random() < 0.5 else 0.0,
                            tail_length=r * rng.uniform(1.3, 2.0) if has_tail else 0.0,
                            tail_level=rng.uniform(0.6, 0.9), mass_effect=effect)


Placer = Callable[[Anatomy, Plane, PituitaryLesion, np.random.Generator], "Lesion | None"]

# class name (the dataset's folder name) -> where its lesion goes. The public dataset's four classes.
PAINTERS: dict[str, Placer] = {
    "glioma": place_glioma,
    "meningioma": place_meningioma,
    "notumor": lambda anat, plane, pituitary, rng: None,
    "pituitary": lambda anat, plane, pituitary, rng: pituitary,
}
