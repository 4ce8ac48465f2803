"""The format table: every engine a device can run, every file a bundle can hold, and what makes each one.

Two tables of plain data, read by every part that needs an engine's or a format's facts instead of repeating them:
`ENGINES`, one `Engine` per inference engine, and `FORMATS`, one `ModelFormat` per exported file (Ultralytics-
style), from which the export CLI's choices, a device's default model, the benchmark's rows and the files a bundle
may hold are derived. Adding an engine or a format: the README's "Where to add things".

Why the rows hold only data: contracts are the vocabulary every part shares, and a device without TensorFlow
imports this module, so it imports no engine, no numpy and no converter (pyproject's import contracts say so).
An engine's backend is therefore named by its module path (`Engine.backend`), which the runtime's registry
imports only when a file of that engine is opened; a format's converter is found by its key in the export side's
registry (tumor_edge.export.formats), which this module never sees.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    """One inference engine and every fact about it that more than one part needs."""

    name: str  # "onnxruntime": the key formats, bundles' backends and benchmark records use
    suffixes: tuple[str, ...]  # its model's files: the first names the model, the others travel beside it
    backend: str  # the module under tumor_edge.runtime.backends whose BACKEND opens its files
    label: str = ""  # how people write it ("LiteRT"); the name when empty
    extra: str | None = None  # the pip extra that installs it; None: every install has it
    module: str | None = None  # the top-level module probed (found, never imported) to tell whether it is here
    packages: tuple[str, ...] = ()  # distribution names that provide it, reported by env and bench (first wins)

    def __post_init__(self) -> None:
        if not self.suffixes or any(not s.startswith(".") or s != s.lower() for s in self.suffixes):
            raise ValueError(f"engine {self.name!r}: suffixes must be lower-case and start with '.'")

    @property
    def suffix(self) -> str:
        """The suffix of the file a model is named by (".onnx"; ".xml" for an .xml + .bin pair)."""
        return self.suffixes[0]

    @property
    def title(self) -> str:
        return self.label or self.name

    def install_hint(self) -> str:
        return f"pip install 'tumor-edge[{self.extra}]'" if self.extra else "pip install tumor-edge"

    def companions(self, file_name: str) -> tuple[str, ...]:
        """The other files that travel with a model file of this engine ("m.xml" -> ("m.bin",))."""
        stem = file_name[: -len(self.suffix)] if file_name.lower().endswith(self.suffix) else file_name
        return tuple(stem + s for s in self.suffixes[1:])


# The engines, by name. A suffix belongs to one engine: one file is never opened by two.
ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("onnxruntime", (".onnx",), "tumor_edge.runtime.backends.onnxruntime_backend", label="onnxruntime",
           packages=("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
    Engine("litert", (".tflite",), "tumor_edge.runtime.backends.litert_backend", label="LiteRT", extra="tflite",
           module="ai_edge_litert", packages=("ai-edge-litert", "ai-edge-litert-nightly", "tflite-runtime")),
)}


def engine_versions() -> dict[str, str]:
    """engine name -> the version of the first of its `packages` installed, "absent" where none is: what a
    choice of the fastest file on this machine depends on, so a new engine's upgrade invalidates it too.

    Read from the `<distribution>-<version>.dist-info` folder names on sys.path (one listing a folder), not with
    importlib.metadata, whose import costs more than a cold start can spend on a cache key."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                dist, _, version = name[: -len(".dist-info")].partition("-")
                found.setdefault(_normalised(dist), version)
    return {engine.name: next((found[p] for p in map(_normalised, engine.packages) if p in found), "absent")
            for engine in ENGINES.values()}


def _normalised(distribution: str) -> str:
    """A distribution's name as its dist-info folder spells it (PEP 503 normalisation, then '_')."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


@dataclass(frozen=True)
class ModelFormat:
    """One kind of exported file. Its converter is registered under `key` in tumor_edge.export.formats."""

    key: str  # "onnx-int8": the name users, benchmark records and the converter registry use
    format: str  # container: "onnx" | "tflite" (the --formats choices)
    precision: str  # "fp32" | "fp16" | "int8"
    file: str  # its (first) file name inside a bundle; an engine with several suffixes adds the others
    engine: str  # a key of ENGINES: what runs it on the device
    enabled_by: str | None = None  # the export option that adds it ("int8", "fp16"); None: always made
    needs: str | None = None  # the key of a format this one is converted from (exported first)
    default_rank: int | None = None  # device preference when a bundle is named without a file (lower first)

    @property
    def suffix(self) -> str:
        return ENGINES[self.engine].suffix

    @property
    def files(self) -> tuple[str, ...]:
        """Every file this format writes into a bundle: the model file, then its engine's companions."""
        return (self.file, *ENGINES[self.engine].companions(self.file))


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("onnx-fp32", "onnx", "fp32", "model_fp32.onnx", "onnxruntime", default_rank=1),
    ModelFormat("onnx-fp16", "onnx", "fp16", "model_fp16.onnx", "onnxruntime", enabled_by="fp16",
                needs="onnx-fp32"),
    ModelFormat("onnx-int8", "onnx", "int8", "model_int8.onnx", "onnxruntime", enabled_by="int8",
                needs="onnx-fp32", default_rank=0),
    ModelFormat("tflite-fp32", "tflite", "fp32", "model_fp32.tflite", "litert", default_rank=4),
    ModelFormat("tflite-fp16", "tflite", "fp16", "model_fp16.tflite", "litert", enabled_by="fp16",
                default_rank=3),
    ModelFormat("tflite-int8", "tflite", "int8", "model_int8.tflite", "litert", enabled_by="int8",
                default_rank=2),
)


# Everything below reads the tables when called, never a copy taken at import: a row added to ENGINES or FORMATS
# (a new engine, a test's) is seen by every lookup at once.

def by_key() -> dict[str, ModelFormat]:
    return {f.key: f for f in FORMATS}


def containers() -> tuple[str, ...]:
    """The --formats choices, in table order."""
    return tuple(dict.fromkeys(f.format for f in FORMATS))


def enabling_options() -> tuple[str, ...]:
    """The export options that add formats ("fp16", "int8")."""
    return tuple(dict.fromkeys(f.enabled_by for f in FORMATS if f.enabled_by))


def default_model_preference() -> tuple[str, ...]:
    """Bundle file names a device tries, in order, when told only the bundle."""
    ranked = sorted((f for f in FORMATS if f.default_rank is not None), key=lambda f: f.default_rank)
    return tuple(f.file for f in ranked)


def bundle_model_files() -> tuple[str, ...]:
    """Every model file name a bundle may hold (companion files included)."""
    return tuple(name for f in FORMATS for name in f.files)


def format_of(file_name: str) -> ModelFormat | None:
    """The table row of a bundle file name, None for a file the table does not know."""
    return next((f for f in FORMATS if f.file == file_name), None)


def engine_for_suffix(suffix: str) -> str | None:
    """The engine whose model files carry this suffix (".onnx" -> "onnxruntime"), None if none does. A companion
    suffix (an engine's second file) names no engine: that file is not a model by itself."""
    suffix = suffix.lower()
    return next((e.name for e in ENGINES.values() if e.suffix == suffix), None)


def format_names() -> frozenset[str]:
    """The `format` a bundle's model entry may declare: a container of the table's rows ("onnx", "tflite", an
    "openvino" row's), or an engine's model suffix without its dot (an engine registered without a row)."""
    return frozenset(f.format for f in FORMATS) | frozenset(e.suffix.lstrip(".") for e in ENGINES.values())


def format_suffixes(fmt: str) -> tuple[str, ...]:
    """The suffixes a model file of this format may end in: the model suffix of each engine its rows run on, and
    of the engine whose suffix is the format's name ("pairir" -> (".xml",); "onnx" -> (".onnx",))."""
    engines = [f.engine for f in FORMATS if f.format == fmt] + [engine_for_suffix("." + fmt)]
    return tuple(dict.fromkeys(ENGINES[e].suffix for e in engines if e in ENGINES))


def select(containers: tuple[str, ...] | list[str], options: set[str] | frozenset[str]) -> list[ModelFormat]:
    """The rows an export makes for the chosen containers and enabling options, in dependency order."""
    return [f for f in FORMATS if f.format in containers and (f.enabled_by is None or f.enabled_by in options)]


# Table-derived names, answered from the tables at each access. A `from ... import NAME` keeps what it got at its
# own import: call the function for the live table.
_DERIVED = {"BY_KEY": by_key, "BY_FILE": lambda: {f.file: f for f in FORMATS}, "CONTAINERS": containers,
            "ENABLING_OPTIONS": enabling_options, "DEFAULT_MODEL_PREFERENCE": default_model_preference,
            "BUNDLE_MODEL_FILES": bundle_model_files}


def __getattr__(name: str):
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
