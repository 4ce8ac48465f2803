"""Generated out-of-distribution images, to measure (never to fit) how often the checks flag what they should.

Each set is uint8 RGB at the model's input size, reproducible from a seed: uniform colour noise, a constant
grey, smooth random colour fields (photograph-like: colour and structure, no anatomy), and in-distribution scans
turned negative (anatomy present, contrast inverted). Synthetic; described by name in every report.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _noise(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _constant(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8), (n, *size, 3)).copy()


def _colour_fields(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        field = np.zeros((h, w, 3), np.float32)
        for _ in range(4):  # a few coloured waves and blobs
            fy, fx = rng.uniform(0.5, 4, 2) * 2 * np.pi / np.array([h, w])
            field += rng.uniform(20, 60, 3) * np.sin(fy * yy + fx * xx + rng.uniform(0, 6))[..., None]
        out[i] = np.clip(field + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8)
    return out


GENERATORS: dict[str, Callable[[int, tuple[int, int], np.random.Generator], np.ndarray]] = {
    "uniform noise": _noise,
    "constant grey": _constant,
    "colour fields": _colour_fields,
}


def generated_sets(n: int, size: tuple[int, int], seed: int = 0, scans: np.ndarray | None = None
                   ) -> dict[str, np.ndarray]:
    """Name -> (n, H, W, 3) uint8 images; with in-distribution `scans`, also their negatives."""
    rng = np.random.default_rng(seed)
    sets = {name: make(n, size, rng) for name, make in GENERATORS.items()}
    if scans is not None and len(scans):
        sets["inverted scans"] = 255 - np.asarray(scans[:n], np.uint8)
    return sets
