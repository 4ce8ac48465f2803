"""Reference inputs any machine regenerates bit for bit, and the outputs a bundle's models give on them.

Export records (tumor_edge.export.reference: the runtime never writes a bundle), per model, the class
probabilities for a few generated images (no patient data in a bundle), and every other output the bundle
declares (the heatmap, the OOD features) for some of those images; a device regenerates the same images and
compares (tumor_edge.runtime.choice), so a user learns whether this device's kernels (AVX2, VNNI, ARM, another
onnxruntime) reproduce the export machine's results.

Bit-exact everywhere: the only randomness is PCG64's raw 64-bit stream (`random_raw`, fixed by the algorithm,
unlike numpy's distribution methods, which may change between numpy versions), turned into floats by integer
shifts; images are drawn with +, -, *, / only (IEEE-754 rounds those identically on every machine; no exp, sin
or sqrt, whose last bit varies between math libraries) and rounded to uint8 with `np.rint`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tumor_edge.contracts.bundle import BundleMetadata, ReferenceSet
from tumor_edge.errors import ConfigError


class _Uniform:
    """Uniform floats in [0, 1) from PCG64's raw stream: 53 random bits each, identical on every platform."""

    def __init__(self, seed: int):
        self._bits = np.random.PCG64(seed)

    def __call__(self, n: int = 1) -> np.ndarray:
        raw = self._bits.random_raw(n).astype(np.uint64)
        return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _bump(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """A smooth blob: (1 - r^2)^2 inside the ellipse, 0 outside (polynomial: exact on every machine)."""
    d = ((yy - cy) / ry) * ((yy - cy) / ry) + ((xx - cx) / rx) * ((xx - cx) / rx)
    inside = np.maximum(1.0 - d, 0.0)
    return inside * inside


def brain_blobs(seed: int, count: int, height: int, width: int) -> np.ndarray:
    """uint8 (count, height, width, 3): grey 'brain-like' slices (a bright elliptic head, darker ventricles,
    a few tissue blobs, one lesion-like bright spot, faint noise). Synthetic; not a scan of anyone."""
    if not (1 <= count <= 256 and 8 <= height <= 4096 and 8 <= width <= 4096):
        raise ConfigError(f"reference images: count 1..256 and sizes 8..4096, not {count}, {height}x{width}")
    uniform = _Uniform(seed)
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64) / height, np.arange(width, dtype=np.float64) / width,
                         indexing="ij")
    images = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        u = uniform(32)
        head = _bump(yy, xx, 0.5 + 0.08 * (u[0] - 0.5), 0.5 + 0.08 * (u[1] - 0.5), 0.36 + 0.08 * u[2],
                     0.30 + 0.08 * u[3])
        value = 150.0 * np.minimum(head * 4.0, 1.0) + 40.0 * head
        value = value - 70.0 * _bump(yy, xx, 0.5, 0.5 + 0.04 * (u[4] - 0.5), 0.10 + 0.05 * u[5], 0.05 + 0.03 * u[6])
        for k in range(4):  # tissue texture
            a = 7 + 4 * k
            value = value + (30.0 * u[a] - 15.0) * _bump(yy, xx, 0.25 + 0.5 * u[a + 1], 0.25 + 0.5 * u[a + 2],
                                                         0.05 + 0.1 * u[a + 3], 0.05 + 0.1 * u[a + 3])
        value = value + 90.0 * _bump(yy, xx, 0.3 + 0.4 * u[23], 0.3 + 0.4 * u[24], 0.04 + 0.08 * u[25],
                                     0.04 + 0.08 * u[26])  # a lesion
        noise = uniform(height * width).reshape(height, width)
        value = np.clip(value * (0.9 + 0.2 * u[27]) + 12.0 * noise, 0.0, 255.0)
        images[i] = np.rint(value).astype(np.uint8)[..., None]
    return images


# Generator name -> function(seed, count, height, width). Names are stored in bundles: never change what a
# name produces; add a new name instead.
GENERATORS: dict[str, Callable[[int, int, int, int], np.ndarray]] = {"tumor-edge-brain-blobs-v1": brain_blobs}


def reference_images(reference: ReferenceSet, metadata: BundleMetadata) -> np.ndarray:
    generator = GENERATORS.get(reference.generator)
    if generator is None:
        raise ConfigError(f"reference generator {reference.generator!r} is unknown to this tumor-edge "
                          f"(knows {', '.join(GENERATORS)}); upgrade tumor-edge")
    spec = metadata.preprocessing
    return generator(reference.seed, reference.count, spec.height, spec.width)


def reference_role_outputs(classifier, images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
    """Every output by role ("scores": probabilities, as the runtime returns them) for the reference images."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        for role, value in classifier.infer_outputs(images[i:i + batch_size]).items():
            parts.setdefault(role, []).append(np.asarray(value))
    return {role: np.concatenate(values) for role, values in parts.items()}
