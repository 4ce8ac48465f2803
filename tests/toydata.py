"""Small generated image folders for tests: a grey head-like ellipse whose lesion position and shape carry the
class (never a flat colour or a corner marker). Synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def toy_image(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    head = (((xx - cx) / 0.42) ** 2 + ((yy - cy) / 0.46) ** 2) < 1.0
    img = np.where(head, 90 + 25 * np.sin(xx * 25 + rng.uniform(0, 6)) * np.cos(yy * 19), 5.0)
    r = rng.uniform(0.07, 0.10)
    if label == "glioma":  # intra-axial, a hemisphere, ring with dark core
        px, py = cx + rng.choice([-1, 1]) * rng.uniform(0.15, 0.22), cy + rng.uniform(-0.15, 0.1)
        d = np.hypot(xx - px, yy - py)
        img = np.where(d < r, 210.0, img)
        img = np.where(d < r * 0.5, 60.0, img)
    elif label == "meningioma":  # against the top of the skull, bright, homogeneous
        px, py = cx + rng.uniform(-0.15, 0.15), cy - 0.38
        d = np.hypot(xx - px, (yy - py) * 1.6)
        img = np.where((d < r * 1.3) & head, 235.0, img)
    elif label == "pituitary":  # small midline mass low in the image
        px, py = cx, cy + 0.18
        img = np.where(np.hypot(xx - px, yy - py) < r * 0.7, 230.0, img)
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_toy_dataset(root: Path, train_per_class: int = 24, test_per_class: int = 8, size: int = 80,
                     seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("Training", train_per_class), ("Testing", test_per_class)):
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                grey = toy_image(label, size, rng)
                Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / f"{label}_{i:03d}.jpg", quality=92)
    return root
