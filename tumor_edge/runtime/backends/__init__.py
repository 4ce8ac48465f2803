"""Inference backends: onnxruntime always, LiteRT when `ai-edge-litert` is installed.

One job per module: `protocol` (what a backend offers), `options` (BackendOptions, providers, machine target),
`onnxruntime_backend` and `litert_backend` (the engines, each given a model's bytes), `external_data` (the files an
.onnx model reads besides itself), `registry` (engine name -> backend factory, `open_backend`). Every backend takes
float32 NHWC batches in the model's input scale and returns every model output, in model order.
"""

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

_BACKENDS = {"LiteRTBackend": "litert_backend", "OnnxBackend": "onnxruntime_backend"}


def __getattr__(name: str):
    """The backend classes load on first use: an engine's module is imported only when that engine runs (the
    registry opens files through the engine table), so a process running ONNX never loads LiteRT's."""
    if name in _BACKENDS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_BACKENDS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OPTIMIZATION_LEVELS", "Backend", "BackendOptions", "LiteRTBackend", "OnnxBackend", "backend_factory",
           "engine_of", "machine_target", "open_backend", "resolve_providers"]
