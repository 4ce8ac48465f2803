"""The backend registry, keyed by the engine names of the format table (tumor_edge.contracts.formats.ENGINES).

A new engine is one module implementing the Backend protocol plus one entry here; which files it runs follows
from the engine's suffix in the format table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tumor_edge.contracts.formats import ENGINES, engine_for_suffix
from tumor_edge.errors import MissingExtraError, ModelError
from tumor_edge.runtime.backends.litert_backend import LiteRTBackend
from tumor_edge.runtime.backends.onnxruntime_backend import OnnxBackend
from tumor_edge.runtime.backends.options import BackendOptions
from tumor_edge.runtime.backends.protocol import Backend

BackendFactory = Callable[..., Backend]  # (path, options, sha256=None, source_check=None) -> Backend

ENGINE_BACKENDS: dict[str, BackendFactory] = {
    "onnxruntime": OnnxBackend,
    "litert": LiteRTBackend,
}

# The same registry keyed by file suffix (".onnx" -> OnnxBackend), derived from the format table.
BACKENDS: dict[str, BackendFactory] = {ENGINES[engine]: factory for engine, factory in ENGINE_BACKENDS.items()}


# Engines that need an optional package, and the install hint: checked without importing the package.
ENGINE_EXTRAS: dict[str, tuple[str, str]] = {"litert": ("ai_edge_litert", "tflite")}


def engine_of(path: Path) -> str:
    """The engine that runs this file, or a one-line error: an unknown suffix (ModelError) or a missing optional
    package (MissingExtraError). Cheap (no engine import), so callers can say so before hashing a model."""
    import importlib.util

    engine = engine_for_suffix(Path(path).suffix)
    if engine is None or engine not in ENGINE_BACKENDS:
        raise ModelError(f"unsupported model format {Path(path).suffix!r}; expected one of {sorted(BACKENDS)}", path)
    module, extra = ENGINE_EXTRAS.get(engine, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"running {ENGINES[engine]} files needs LiteRT: pip install 'tumor-edge[{extra}]'",
                                path)
    return engine


def open_backend(path: str | Path, options: BackendOptions | None = None, sha256: str | None = None,
                 source_check: Callable[[], object] | None = None) -> Backend:
    """Load a model file with the engine its suffix names. `sha256` is the file's identity for the optimised-model
    cache (saves hashing it again): one the caller has checked, or one it is still checking, in which case
    `source_check` waits for that check and raises if the file failed it. A backend calls `source_check` before
    it reads the file itself and before it returns, so a file that fails never runs; until then it may load what
    is not that file (this device's cached optimised form), which is how the check overlaps the load."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    return ENGINE_BACKENDS[engine_of(path)](path, options or BackendOptions(), sha256=sha256,
                                            source_check=source_check)
