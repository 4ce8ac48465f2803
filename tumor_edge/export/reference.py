"""A bundle's reference record: every listed model's outputs on generated images, stored in metadata.json
(`reference`), so `tumor-edge verify` on a device can regenerate the same images and compare.

The writer lives in export because only export writes bundles; the runtime keeps the reading side (the
generators, `reference_images`, `reference_role_outputs` and verify's comparison), so a device can check a record
but never makes one. Everything here goes through the runtime's public API: the record is made by the very code
path a device runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import MAX_REFERENCE_VALUES, ReferenceSet
from tumor_edge.errors import MissingExtraError
from tumor_edge.machine import host, int8_acceleration
from tumor_edge.runtime import SCORES, Bundle, machine_target, reference_images, reference_role_outputs

DEFAULT_SEED = 20261127
DEFAULT_COUNT = 16
# Names are stored in bundles, and the runtime's generators give each name fixed images: this one is brain_blobs.
DEFAULT_GENERATOR = "tumor-edge-brain-blobs-v1"
# Values kept per file and non-score role: InceptionV3's 299 px heatmap (8 x 8 x 4) keeps its first 4 images; a
# larger map keeps fewer (at least one). metadata.json is parsed at every model load (cold start), so it stays small.
ROLE_VALUES_PER_FILE = 1024
SIGNIFICANT_DIGITS = 6  # relative rounding 5e-7, far below the tightest role tolerance (1e-3 of the range)


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


def new_reference(metadata) -> tuple[ReferenceSet, np.ndarray]:
    """An empty reference record for this machine and the generated images its outputs are taken on: the seed
    the int8 quantizer measured as driving its activations highest (`metrics`' int8 report), else the default."""
    chosen = ((metadata.metrics or {}).get("onnx_int8_calibration") or {}).get("reference_images") or {}
    reference = ReferenceSet(DEFAULT_GENERATOR, int(chosen.get("seed", DEFAULT_SEED)), DEFAULT_COUNT)
    reference.machine = {**machine_target(), "cpu": host()["cpu"], "int8": int8_acceleration()}
    return reference, reference_images(reference, metadata)


def add_outputs(reference: ReferenceSet, name: str, classifier, images: np.ndarray) -> None:
    """Record what one opened model file gives on the reference images: its probabilities and, per other role,
    as many leading images as `role_entry` keeps."""
    outputs = reference_role_outputs(classifier, images)
    reference.outputs[name] = [[float(v) for v in row] for row in np.asarray(outputs[SCORES], np.float64)]
    roles = {role: role_entry(value) for role, value in outputs.items()
             if role != SCORES and np.all(np.isfinite(value))}
    roles = {role: entry for role, entry in roles.items() if entry is not None}
    if roles:
        reference.roles[name] = roles


def record_reference(bundle_dir: str | Path) -> None:
    """Record the reference of a finished bundle in its metadata.json (`reference`), each listed model checked
    against its sha256 first, like any use. Export records its own while it checks each file; this is for a
    bundle assembled otherwise."""
    bundle = Bundle.open(bundle_dir)
    metadata = bundle.metadata
    reference, images = new_reference(metadata)
    for name in bundle.models:
        try:
            classifier = bundle.classifier(name)
        except MissingExtraError:  # an engine this machine lacks (LiteRT): verify says that file has no reference
            continue
        add_outputs(reference, name, classifier, images)
    metadata.reference = reference
    metadata.write(bundle.path)
