"""Inference backends: onnxruntime always, LiteRT when `ai-edge-litert` is installed.

One job per module: `protocol` (what a backend offers), `options` (BackendOptions, providers, machine target),
`onnxruntime_backend` and `litert_backend` (the engines), `optimized` and `onnx_props` (onnxruntime's optimised
graph and the record binding it to its source), `registry` (engine name -> backend factory, `open_backend`). Every
backend takes float32 NHWC batches in the model's input scale and returns every model output, in model order.
"""

from tumor_edge.runtime.backends.litert_backend import LiteRTBackend
from tumor_edge.runtime.backends.onnx_props import append_metadata_prop
from tumor_edge.runtime.backends.onnxruntime_backend import OnnxBackend, optimized_sibling
from tumor_edge.runtime.backends.optimized import (
    OPTIMIZED_META_KEY,
    read_optimized_record,
    save_optimized_model,
    usable_optimized,
)
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

__all__ = ["OPTIMIZATION_LEVELS", "OPTIMIZED_META_KEY", "Backend", "BackendOptions", "LiteRTBackend", "OnnxBackend",
           "append_metadata_prop", "backend_factory", "engine_of", "machine_target", "open_backend",
           "optimized_sibling", "read_optimized_record", "resolve_providers",
           "save_optimized_model", "usable_optimized"]
