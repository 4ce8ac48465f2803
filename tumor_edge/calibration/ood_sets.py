"""Generated out-of-distribution images (seeded uint8 RGB), to measure (never to fit) how often the checks flag
what they should: from no anatomy (noise, colour fields) to grey anatomy of the wrong kind and inverted scans."""

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


def _chest_xray_like(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A frontal chest radiograph's layout: bright soft tissue filling most of the frame, two dark lung fields
    crossed by bright rib arcs, a bright spine and mediastinum between them; grey, like the scans."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        cy, cx, tilt = rng.uniform(0.5, 0.6), rng.uniform(0.46, 0.54), rng.uniform(-0.04, 0.04)
        body = ((yy - cy) / 0.75) ** 2 + ((xx - cx) / rng.uniform(0.5, 0.6)) ** 2 < 1
        value = np.where(body, rng.uniform(150, 190), rng.uniform(10, 40)).astype(np.float32)
        lungs = np.zeros_like(value, dtype=bool)
        for side in (-1, 1):
            ly, lx = cy - 0.05 + tilt * side, cx + side * rng.uniform(0.17, 0.22)
            lungs |= ((yy - ly) / rng.uniform(0.28, 0.34)) ** 2 + ((xx - lx) / rng.uniform(0.11, 0.15)) ** 2 < 1
        value = np.where(lungs, value - rng.uniform(80, 110), value)
        period = rng.uniform(0.07, 0.1)  # ribs: arcs that sag towards the sides
        ribs = np.mod(yy + 0.9 * (xx - cx) ** 2 + rng.uniform(0, period), period) < 0.3 * period
        value = np.where(lungs & ribs, value + rng.uniform(35, 55), value)
        value = np.where(np.abs(xx - cx) < rng.uniform(0.04, 0.06), np.maximum(value, rng.uniform(200, 230)), value)
        value += rng.normal(0, 3, value.shape).astype(np.float32)
        out[i] = np.clip(value, 0, 255).astype(np.uint8)[..., None]
    return out


GENERATORS: dict[str, Callable[[int, tuple[int, int], np.random.Generator], np.ndarray]] = {
    "uniform noise": _noise,
    "constant grey": _constant,
    "colour fields": _colour_fields,
    "chest X-ray-like": _chest_xray_like,
}

OOD_SET_SIZE = 50  # images per generated set, in training's evaluation and in export's trust outputs alike


def generated_sets(n: int, size: tuple[int, int], seed: int = 0, scans: np.ndarray | None = None
                   ) -> dict[str, np.ndarray]:
    """Name -> (n, H, W, 3) uint8 images; with in-distribution `scans`, also their negatives."""
    rng = np.random.default_rng(seed)
    sets = {name: make(n, size, rng) for name, make in GENERATORS.items()}
    if scans is not None and len(scans):
        sets["inverted scans"] = 255 - np.asarray(scans[:n], np.uint8)
    return sets
