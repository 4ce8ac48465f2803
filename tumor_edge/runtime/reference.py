"""Reference inputs any machine regenerates bit for bit, and the outputs a bundle's models give on them.

Export records, per model, the class probabilities for a few generated images (no patient data in a bundle),
and every other output the bundle declares (the heatmap, the OOD features) for as many of those images as fit
ROLE_VALUES_PER_FILE; `tumor-edge verify` regenerates the same images on a device and compares, so a user
learns whether this device's kernels (AVX2, VNNI, ARM, another onnxruntime) reproduce the export machine's
results.

Bit-exact everywhere: the only randomness is PCG64's raw 64-bit stream (`random_raw`, fixed by the algorithm,
unlike numpy's distribution methods, which may change between numpy versions), turned into floats by integer
shifts; images are drawn with +, -, *, / only (IEEE-754 rounds those identically on every machine; no exp, sin
or sqrt, whose last bit varies between math libraries) and rounded to uint8 with `np.rint`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import MAX_REFERENCE_VALUES, BundleMetadata, ReferenceSet, is_optimized_name
from tumor_edge.errors import ConfigError, MissingExtraError

DEFAULT_SEED = 20261127
DEFAULT_COUNT = 16
SCORES = "scores"
# Values kept per file and non-score role: InceptionV3's 299 px heatmap (8 x 8 x 4) keeps its first 4 images; a
# larger map keeps fewer (at least one). metadata.json is parsed at every model load (cold start): with all 16
# images and 7 digits, a 6-file 299 px bundle's metadata.json measured 586 KB.
ROLE_VALUES_PER_FILE = 1024
SIGNIFICANT_DIGITS = 6  # relative rounding 5e-7, far below the tightest role tolerance (1e-3 of the range)


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
DEFAULT_GENERATOR = "tumor-edge-brain-blobs-v1"


def reference_images(reference: ReferenceSet, metadata: BundleMetadata) -> np.ndarray:
    generator = GENERATORS.get(reference.generator)
    if generator is None:
        raise ConfigError(f"reference generator {reference.generator!r} is unknown to this tumor-edge "
                          f"(knows {', '.join(GENERATORS)}); upgrade tumor-edge")
    spec = metadata.preprocessing
    return generator(reference.seed, reference.count, spec.height, spec.width)


def reference_outputs(classifier, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Probabilities (count, classes) for the reference images, a few at a time (bounded memory at 299 px)."""
    return reference_role_outputs(classifier, images, batch_size)[SCORES]


def reference_role_outputs(classifier, images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
    """Every output by role ("scores": probabilities, as the runtime returns them) for the reference images."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        for role, value in classifier.infer_outputs(images[i:i + batch_size]).items():
            parts.setdefault(role, []).append(np.asarray(value))
    return {role: np.concatenate(values) for role, values in parts.items()}


def role_entry(values: np.ndarray) -> dict[str, list] | None:
    """{"shape", "values"} of one role's outputs, as many leading images as ROLE_VALUES_PER_FILE allows; None
    when one image's output alone is too large to record (verify then says the role has no reference)."""
    values = np.asarray(values, np.float64)
    per_image = max(1, int(np.prod(values.shape[1:])))
    keep = max(1, min(len(values), ROLE_VALUES_PER_FILE // per_image))
    if values.ndim < 1 or not len(values) or keep * per_image > MAX_REFERENCE_VALUES:
        return None
    kept = values[:keep]
    return {"shape": list(kept.shape), "values": [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in kept.ravel()]}


def listed_models(metadata: BundleMetadata) -> list[str]:
    """The bundle's models, without the optimised twins 0.1 bundles listed."""
    return [name for name in metadata.models if not is_optimized_name(name)]


def record_reference(bundle_dir: str | Path, seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> None:
    """Run every listed model of a bundle on the generated reference images and store the probabilities in its
    metadata.json (`reference`). Export calls this once its models and metadata.json are final; each model is
    checked against its sha256 first, like any use."""
    from tumor_edge.machine import host, int8_acceleration
    from tumor_edge.runtime.backends import machine_target
    from tumor_edge.runtime.classifier import Classifier

    bundle_dir = Path(bundle_dir)
    metadata = BundleMetadata.read(bundle_dir)
    reference = ReferenceSet(DEFAULT_GENERATOR, seed, count)
    images = reference_images(reference, metadata)
    for name in listed_models(metadata):
        try:
            classifier = Classifier.from_bundle(bundle_dir, model_file=name)
        except MissingExtraError:  # an engine this machine lacks (LiteRT): verify says that file has no reference
            continue
        outputs = reference_role_outputs(classifier, images)
        reference.outputs[name] = [[float(v) for v in row] for row in np.asarray(outputs[SCORES], np.float64)]
        roles = {role: role_entry(value) for role, value in outputs.items()
                 if role != SCORES and np.all(np.isfinite(value))}
        roles = {role: entry for role, entry in roles.items() if entry is not None}
        if roles:
            reference.roles[name] = roles
    reference.machine = {**machine_target(), "cpu": host()["cpu"], "int8": int8_acceleration()}
    metadata.reference = reference
    metadata.write(bundle_dir)
