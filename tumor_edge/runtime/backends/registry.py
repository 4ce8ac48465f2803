"""The backend registry: engine name -> the factory that opens its files, for the engines of the format table
(tumor_edge.contracts.formats.ENGINES).

An engine's row names its backend module (`Engine.backend`), whose `BACKEND` is the factory, imported the first
time a file of that engine is opened: contracts import no engine, and this is the one place that turns the name
into code. An engine outside tumor-edge (or a test's) is a row whose `backend` names its own module.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from tumor_edge.contracts.formats import ENGINES, Engine, engine_for_suffix
from tumor_edge.errors import MissingExtraError, ModelError
from tumor_edge.runtime.backends.options import BackendOptions
from tumor_edge.runtime.backends.protocol import Backend

BackendFactory = Callable[..., Backend]  # (path, options, sha256=None, source_check=None) -> Backend

def backend_factory(engine: str) -> BackendFactory:
    """The factory for `engine`: its row's backend module's BACKEND, the module imported on first use (Python
    keeps it in sys.modules, so a row changed at run time is followed)."""
    return importlib.import_module(ENGINES[engine].backend).BACKEND


def engine_row(path: Path) -> Engine:
    """The format table's row for the engine that runs this file, or a one-line error: an unknown suffix
    (ModelError) or a missing optional package (MissingExtraError). Cheap (no engine import), so callers can say
    so before hashing a model."""
    path = Path(path)
    name = engine_for_suffix(path.suffix)
    if name is None:
        known = sorted(e.suffix for e in ENGINES.values())
        raise ModelError(f"unsupported model format {path.suffix!r}; expected one of {known}", path)
    engine = ENGINES[name]
    if engine.module and importlib.util.find_spec(engine.module) is None:
        raise MissingExtraError(f"running {engine.suffix} files needs {engine.title}: {engine.install_hint()}", path)
    return engine


def engine_of(path: Path) -> str:
    """The name of the engine that runs this file (see `engine_row` for the errors)."""
    return engine_row(path).name


def open_backend(path: str | Path, options: BackendOptions | None = None, sha256: str | None = None,
                 source_check: Callable[[], object] | None = None) -> Backend:
    """Load a model file with the engine its suffix names (a file outside a bundle, or one export has just
    written: a bundle's listed files go through `open_model.open_bundle_model`, which reads, checks and hands
    over the bytes). `source_check`, when given, runs before the engine sees the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    engine = engine_row(path)
    for companion in engine.companions(path.name):
        if not (path.parent / companion).is_file():
            raise ModelError(f"{engine.title} needs {companion} beside this file, and it is missing", path)
    return backend_factory(engine.name)(path, options or BackendOptions(), sha256=sha256, source_check=source_check)
