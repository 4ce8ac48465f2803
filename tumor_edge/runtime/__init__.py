"""The device runtime's public API: decode, preprocess and classify with onnxruntime (or LiteRT), never TensorFlow.

Every other part of tumor-edge and the benchmark scripts reach the runtime through the names below only;
pyproject's import contracts refuse an import of a module under `tumor_edge.runtime.` from outside it, so the
runtime's files can move without breaking its users. The four nouns are `Bundle`, `Engine`, `Classifier` and
`Reader`; the rest are what they take and give, and building blocks other parts reuse so that they run the
device's own code path (parity, timing, serving, the demo).

Cheap to import: names load on first use (PEP 562 `__getattr__`), so `import tumor_edge.runtime` imports no numpy,
Pillow or onnxruntime. The TYPE_CHECKING block mirrors `_EXPORTS` so type checkers and the import graph (grimp,
import-linter) see the real edges; a test keeps the two equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_READERS = "tumor_edge.runtime.readers"

# public name -> defining module
_EXPORTS: dict[str, str] = {
    # the four nouns
    "Bundle": "tumor_edge.runtime.verify",
    "Engine": "tumor_edge.contracts.formats",
    "Classifier": "tumor_edge.runtime.classifier",
    "Reader": _READERS,
    "ReadOptions": _READERS,
    "Scan": _READERS,
    "Picture": _READERS,
    "read_scan": _READERS,
    "claimed_suffix": _READERS,
    "is_volume": _READERS,
    # what they take and give
    "BundleMetadata": "tumor_edge.contracts.bundle",
    "Preprocessing": "tumor_edge.runtime.preprocess",
    "BackendOptions": "tumor_edge.runtime.backends",
    "Prediction": "tumor_edge.runtime.postprocess",
    "Failure": "tumor_edge.runtime.postprocess",
    "ScanResult": "tumor_edge.runtime.classifier",
    "VolumeSummary": "tumor_edge.runtime.postprocess",
    "VerifyReport": "tumor_edge.runtime.verify",
    "open_backend": "tumor_edge.runtime.backends",
    "verify_bundle": "tumor_edge.runtime.verify",
    # building blocks: preprocessing
    "scale": "tumor_edge.runtime.preprocess",
    "RESIZE_METHODS": "tumor_edge.runtime.preprocess",
    "load_resized": "tumor_edge.runtime.preprocess",
    "preprocess_image": "tumor_edge.runtime.preprocess",
    # inputs
    "is_scan_file": "tumor_edge.runtime.preprocess",
    "load_rgb": "tumor_edge.runtime.preprocess",
    "decode_file": "tumor_edge.runtime.classifier",
    "scan_inputs": "tumor_edge.runtime.preprocess",
    # outputs
    "SCORES": "tumor_edge.contracts.bundle",
    "softmax": "tumor_edge.runtime.postprocess",
    "probability_problem": "tumor_edge.runtime.postprocess",
    "WRITERS": "tumor_edge.runtime.postprocess",
    "csv_cell": "tumor_edge.runtime.postprocess",
    "read_onnx_metadata": "tumor_edge.runtime.classifier",
    "class_map": "tumor_edge.runtime.explain",
    "write_overlay": "tumor_edge.runtime.explain",
    # explanations (the CAM where it has >= 4x4 cells, else occlusion/RISE through the model) and their scoring
    "explain_prediction": "tumor_edge.runtime.explain",
    "ExplainSettings": "tumor_edge.runtime.explain",
    "Explanation": "tumor_edge.runtime.explain",
    "MIN_CAM_CELLS": "tumor_edge.runtime.explain",
    "cam_cells": "tumor_edge.runtime.explain",
    "TOLERANCE_FRACTION": "tumor_edge.runtime.explain",
    "Tally": "tumor_edge.runtime.explain",
    "map_correlation": "tumor_edge.runtime.explain",
    "resize_mask": "tumor_edge.runtime.explain",
    "tolerance_px": "tumor_edge.runtime.explain",
    # out-of-distribution rates
    "flag_rates": "tumor_edge.runtime.postprocess",
    "measure_ood_rates": "tumor_edge.runtime.verify",
    # reference inputs (verify regenerates them; export records the outputs on them)
    "brain_blobs": "tumor_edge.runtime.choice",
    "reference_images": "tumor_edge.runtime.choice",
    "reference_role_outputs": "tumor_edge.runtime.choice",
    "machine_target": "tumor_edge.runtime.backends",
    # files
    "external_data_locations": "tumor_edge.runtime.backends.onnxruntime_backend",
    "labelled_files": "tumor_edge.runtime.verify",
    "recorded_choices": "tumor_edge.runtime.choice",
    "cache_root": "tumor_edge.runtime.choice",
}

# public submodules: name -> module
_MODULES: dict[str, str] = {"readers": _READERS}

# literal, so linters see it; a test keeps it equal to _EXPORTS | _MODULES
__all__ = ["BackendOptions", "Bundle", "BundleMetadata", "Classifier", "Engine", "ExplainSettings", "Explanation",
           "Failure", "MIN_CAM_CELLS", "Picture", "Prediction", "Preprocessing", "RESIZE_METHODS", "ReadOptions",
           "Reader", "SCORES", "Scan", "ScanResult", "TOLERANCE_FRACTION", "Tally", "VerifyReport", "VolumeSummary",
           "WRITERS", "brain_blobs", "cache_root", "cam_cells", "claimed_suffix", "class_map", "csv_cell",
           "decode_file", "explain_prediction", "external_data_locations", "flag_rates", "is_scan_file", "is_volume",
           "labelled_files", "load_resized", "load_rgb", "machine_target", "map_correlation", "measure_ood_rates",
           "open_backend", "preprocess_image", "probability_problem", "read_onnx_metadata", "read_scan", "readers",
           "recorded_choices", "reference_images", "reference_role_outputs", "resize_mask", "scale", "scan_inputs",
           "softmax", "tolerance_px", "verify_bundle", "write_overlay"]

if TYPE_CHECKING:
    from tumor_edge.contracts.bundle import SCORES, BundleMetadata
    from tumor_edge.contracts.formats import Engine
    from tumor_edge.runtime import readers
    from tumor_edge.runtime.backends import BackendOptions, machine_target, open_backend
    from tumor_edge.runtime.backends.onnxruntime_backend import external_data_locations
    from tumor_edge.runtime.choice import (
        brain_blobs,
        cache_root,
        recorded_choices,
        reference_images,
        reference_role_outputs,
    )
    from tumor_edge.runtime.classifier import Classifier, ScanResult, decode_file, read_onnx_metadata
    from tumor_edge.runtime.explain import (
        MIN_CAM_CELLS,
        TOLERANCE_FRACTION,
        ExplainSettings,
        Explanation,
        Tally,
        cam_cells,
        class_map,
        explain_prediction,
        map_correlation,
        resize_mask,
        tolerance_px,
        write_overlay,
    )
    from tumor_edge.runtime.postprocess import (
        WRITERS,
        Failure,
        Prediction,
        VolumeSummary,
        csv_cell,
        flag_rates,
        probability_problem,
        softmax,
    )
    from tumor_edge.runtime.preprocess import (
        RESIZE_METHODS,
        Preprocessing,
        is_scan_file,
        load_resized,
        load_rgb,
        preprocess_image,
        scale,
        scan_inputs,
    )
    from tumor_edge.runtime.readers import (
        Picture,
        Reader,
        ReadOptions,
        Scan,
        claimed_suffix,
        is_volume,
        read_scan,
    )
    from tumor_edge.runtime.verify import Bundle, VerifyReport, labelled_files, measure_ood_rates, verify_bundle


def _import(module: str, name: str) -> Any:
    """The module, or an ImportError that says which public name needs what (not a bare ModuleNotFoundError)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise ImportError(f"tumor_edge.runtime.{name} needs {module}, which this tumor-edge does not have "
                          f"(an older or partial install?)", name=module) from err


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = _import(_MODULES[name], name)
    elif name in _EXPORTS:
        value = getattr(_import(_EXPORTS[name], name), name)
    else:
        raise AttributeError(f"module 'tumor_edge.runtime' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
