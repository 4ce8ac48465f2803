"""Device side: decode, preprocess and classify with onnxruntime (or LiteRT). Never imports TensorFlow.

Names load on first use (PEP 562), so `import tumor_edge.runtime.commands` (what the CLI does to list
commands) costs nothing until a command actually runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> defining module
_EXPORTS = {
    "BackendOptions": "tumor_edge.runtime.backends",
    "open_backend": "tumor_edge.runtime.backends",
    "save_optimized_model": "tumor_edge.runtime.backends",
    "BundleMetadata": "tumor_edge.contracts.bundle",
    "Classifier": "tumor_edge.runtime.classifier",
    "Prediction": "tumor_edge.runtime.classifier",
    "Failure": "tumor_edge.runtime.batch",
    "Preprocessing": "tumor_edge.runtime.preprocess",
    "verify_bundle": "tumor_edge.runtime.verify",
    "record_reference": "tumor_edge.runtime.reference",
}

__all__ = ["BackendOptions", "BundleMetadata", "Classifier", "Failure", "Prediction", "Preprocessing",
           "open_backend", "record_reference", "save_optimized_model", "verify_bundle"]

if TYPE_CHECKING:
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.runtime.backends import BackendOptions, open_backend, save_optimized_model
    from tumor_edge.runtime.batch import Failure
    from tumor_edge.runtime.classifier import Classifier, Prediction
    from tumor_edge.runtime.preprocess import Preprocessing
    from tumor_edge.runtime.reference import record_reference
    from tumor_edge.runtime.verify import verify_bundle


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tumor_edge.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
