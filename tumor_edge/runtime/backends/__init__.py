"""Inference backends: onnxruntime always, LiteRT when `ai-edge-litert` is installed.

One job per module: `protocol` (what a backend offers), `options` (BackendOptions, providers, machine target),
`onnxruntime_backend` and `litert_backend` (the engines, each given a model's bytes), `external_data` (the files an
.onnx model reads besides itself), `registry` (engine name -> backend factory, `open_backend`). Every backend takes
float32 NHWC batches in the model's input scale and returns every model output, in model order.
"""

from tumor_edge.runtime.backends.litert_backend import LiteRTBackend
from tumor_edge.runtime.backends.onnxruntime_backend import OnnxBackend
from tumor_edge.runtime.backends.options import (
    OPTIMIZATION_LEVELS,
    BackendOptions,
    machine_target,
    resolve_providers,
)
from tumor_edge.runtime.backends.protocol import Backend
from tumor_edge.runtime.backends.registry import (
    backend_factory,
    engine_of,
    open_backend,
)

__all__ = ["OPTIMIZATION_LEVELS", "Backend", "BackendOptions", "LiteRTBackend", "OnnxBackend", "backend_factory",
           "engine_of", "machine_target", "open_backend", "resolve_providers"]
