"""How often a bundle's out-of-distribution warnings fire: on generated sets that are not brain MRI slices
(detection rate) and on held-out scans that are (false-alarm rate). Measured through the runtime's own prediction
path, so the figures are what a device user gets; a measurement, never a fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.ood_sets import generated_sets

FEATURE_WARNING = "unlike the training scans"  # how postprocess.warnings_for words the feature check


def _tally(warnings: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Share of images with any warning, with an input-check warning, and with the feature-space warning."""
    n = len(warnings)
    feature = [any(w.startswith(FEATURE_WARNING) for w in ws) for ws in warnings]
    checks = [any(not w.startswith(FEATURE_WARNING) for w in ws) for ws in warnings]
    return {"count": n, "flagged": float(np.mean([bool(ws) for ws in warnings])) if n else None,
            "input_checks_flagged": float(np.mean(checks)) if n else None,
            "feature_flagged": float(np.mean(feature)) if n else None}


def pixel_warnings(classifier, pixels: np.ndarray, batch_size: int = 16) -> list[tuple[str, ...]]:
    """Each model-sized uint8 image's warnings, through `Classifier.predictions`."""
    found: list[tuple[str, ...]] = []
    for start in range(0, len(pixels), batch_size):
        batch = np.ascontiguousarray(pixels[start:start + batch_size])
        results = classifier.predictions(batch, [(None, None, None)] * len(batch))
        found += [tuple(r.warnings) if r.ok else ("no label: model output not a number",) for r in results]
    return found


def file_warnings(classifier, paths: Sequence[Path], batch_size: int = 16) -> tuple[list[tuple[str, ...]], int]:
    """(warnings per readable file, unreadable count) through the streaming path `classify` uses."""
    found, unreadable = [], 0
    for result in classifier.iter_predictions(list(paths), batch_size=batch_size):
        if result.ok:
            found.append(tuple(result.warnings))
        else:
            unreadable += 1
    return found, unreadable


def measure_ood_rates(classifier, test_paths: Sequence[Path], count: int = 50, seed: int = 0,
                      batch_size: int = 16) -> dict[str, Any]:
    """{"sets": {name: rates}, "test": rates on the held-out scans (false alarms), "notes": [...]}.

    `count` images per generated set at the model's input size; the inverted-scans set is made from held-out
    scans, so it needs `test_paths`."""
    from tumor_edge.runtime.pipeline import decode_file

    spec = classifier.preprocessing
    test_warnings, unreadable = file_warnings(classifier, test_paths, batch_size)
    scans = []
    for path in list(test_paths)[:count]:
        decoded = decode_file(path, spec, "middle")
        if decoded.failure is None:
            scans.append(decoded.pixels[0][0])
    sets = generated_sets(count, spec.size, seed, scans=np.stack(scans) if scans else None)
    result = {"sets": {name: _tally(pixel_warnings(classifier, pixels, batch_size)) for name, pixels in sets.items()},
              "test": {**_tally(test_warnings), "unreadable": unreadable},
              "feature_check": bool(classifier.postprocessing.has_ood), "seed": seed, "per_set": count}
    if not classifier.postprocessing.has_ood:
        result["notes"] = ["this bundle has no feature-space fit: input checks only"]
    return result
