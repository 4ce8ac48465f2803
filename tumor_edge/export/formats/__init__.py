"""The converters of the format table's rows (`tumor_edge.contracts.formats.FORMATS`), one module per container,
each registered here by its row's key with `@converter("onnx-int8")`.

`convert(ctx, dst) -> dict` writes the file at `dst` from what the `ExportContext` offers and returns the facts
the bundle's metadata records for that file (keys starting with "_": bulky reports the exporter files elsewhere).
A converter raises on failure; the exporter turns that into a failed row, never a crash. `converter_for` imports
every module of this package on first use, so adding a format has no import list to extend. The modules import
their heavy libraries inside the function, so the TensorFlow-free rows run in TensorFlow-free children (the
function travels there by module and name).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tumor_edge.contracts import formats

Converter = Callable[[Any, Path], dict[str, Any]]  # (ExportContext, destination) -> facts for metadata

CONVERTERS: dict[str, Converter] = {}
_loaded = False


def register_converter(key: str, function: Converter) -> Converter:
    """Make `function` write the files of the format table row `key` (a test's row, or one outside tumor-edge).
    A key registered twice by two different functions is a mistake, and an error."""
    existing = CONVERTERS.get(key)
    if existing is not None and existing is not function:
        raise ValueError(f"format {key!r} already has a converter ({existing.__module__}.{existing.__qualname__})")
    CONVERTERS[key] = function
    return function


def converter(*keys: str) -> Callable[[Converter], Converter]:
    """Decorator: register the function as the converter of these format keys."""

    def register(function: Converter) -> Converter:
        for key in keys:
            register_converter(key, function)
        return function

    return register


def load_converters() -> dict[str, Converter]:
    """Import every converter module of this package once (each registers itself); the registry."""
    global _loaded
    if not _loaded:
        for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
            importlib.import_module(f"{__name__}.{module}")
        _loaded = True
    return CONVERTERS


def engine_converters(engine: formats.Engine) -> dict[str, Converter]:
    """The converters an engine's backend module (`Engine.backend`) offers as `CONVERTERS = {"<format key>":
    convert}`, registered. A converter that needs nothing beyond the engine's own package may live beside the
    backend, so adding an engine end to end is one module; a plain dict, so that module imports nothing of export.
    One that needs TensorFlow or onnx belongs in this package: the runtime never imports them."""
    found = getattr(importlib.import_module(engine.backend), "CONVERTERS", {})
    for key, function in found.items():
        register_converter(key, function)
    return dict(found)


def converter_for(key: str) -> Converter:
    """The function that writes the format `key`; a one-line error when nothing registered one."""
    function = load_converters().get(key)
    if function is None:  # a row whose converter lives in its engine's backend module
        row = next((f for f in formats.FORMATS if f.key == key), None)  # read now: a row added later counts
        if row is not None and row.engine in formats.ENGINES:
            function = engine_converters(formats.ENGINES[row.engine]).get(key)
    if function is None:
        raise LookupError(f"no converter is registered for format {key!r} (tumor_edge.export.formats)")
    return function
