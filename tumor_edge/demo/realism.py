"""Per-image acquisition variety (framing, contrast, noise, flips, size, JPEG quality), drawn from its own random
stream identically for every class, so no global image statistic can tell a classifier the answer."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tumor_edge.demo.anatomy import Anatomy
from tumor_edge.demo.slicing import PLANES, AnatomyVariation, Framing, Plane, rotation
from tumor_edge.runtime.volume import DISPLAY_WHITE_RANGE, FRAME_ZOOM_RANGE


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
        corners = np.array([[x, y, z] for x in (anat.brain_lo[0], anat.brain_hi[0])
                            for y in (anat.brain_lo[1], anat.brain_hi[1])
                            for z in (anat.brain_lo[2], anat.brain_hi[2])])
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
        from scipy import ndimage as ndi

        img = np.clip(image, 0.0, None).astype(np.float32)
        h, w = img.shape
        if self.bias > 0:  # a smooth quadratic field, as receive-coil sensitivity leaves
            a = rng.standard_normal(5)
            y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
            x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
            field = a[0] * x + a[1] * y + 0.5 * (a[2] * x * x + a[3] * y * y + a[4] * x * y)
            img = img * np.exp(self.bias * field / (np.abs(field).max() + 1e-6))
        img = np.clip(img / self.white, 0.0, 1.0) ** self.gamma
        if self.noise > 0:
            n1 = rng.normal(0, self.noise, img.shape)
            n2 = rng.normal(0, self.noise, img.shape)
            img = np.sqrt((img + n1) ** 2 + n2**2)
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
