"""The format table: every file a bundle can hold, and what makes, runs and benchmarks it.

One row per exported file (Ultralytics-style). The export CLI's choices, the order in which a device picks a
bundle's default model, the benchmark's engines and the list of files a bundle may hold are all derived from
this table, so adding a format is one row here plus one converter module (named by `converter`) and, for a new
engine, one backend in `tumor_edge.runtime.backends`.

Converters are named as "module:function" strings and resolved only when that format is exported: the table is
importable on a device without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

# Engine -> the file suffix its files carry. The runtime's backend registry is keyed by the same names.
ENGINES: dict[str, str] = {"onnxruntime": ".onnx", "litert": ".tflite"}


@dataclass(frozen=True)
class ModelFormat:
    """One kind of exported file."""

    key: str  # "onnx-int8": the name users and benchmark records use
    format: str  # container: "onnx" | "tflite" (the --formats choices)
    precision: str  # "fp32" | "fp16" | "int8"
    file: str  # its file name inside a bundle
    engine: str  # a key of ENGINES: what runs it on the device
    converter: str  # "module:function" that writes it: fn(ctx, dst) -> dict of facts for metadata
    enabled_by: str | None = None  # the export option that adds it ("int8", "fp16"); None: always made
    needs: str | None = None  # the key of a format this one is converted from (exported first)
    default_rank: int | None = None  # device preference when a bundle is named without a file (lower first)
    background: bool = False  # its converter starts a background job that export joins at the end

    @property
    def suffix(self) -> str:
        return ENGINES[self.engine]


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("onnx-fp32", "onnx", "fp32", "model_fp32.onnx", "onnxruntime",
                "tumor_edge.export.formats.onnx_fp32:convert", default_rank=1),
    ModelFormat("onnx-fp16", "onnx", "fp16", "model_fp16.onnx", "onnxruntime",
                "tumor_edge.export.formats.onnx_fp16:convert", enabled_by="fp16", needs="onnx-fp32"),
    ModelFormat("onnx-int8", "onnx", "int8", "model_int8.onnx", "onnxruntime",
                "tumor_edge.export.formats.onnx_int8:convert", enabled_by="int8", needs="onnx-fp32",
                default_rank=0),
    ModelFormat("tflite-fp32", "tflite", "fp32", "model_fp32.tflite", "litert",
                "tumor_edge.export.formats.tflite_fp32:convert", default_rank=4),
    ModelFormat("tflite-fp16", "tflite", "fp16", "model_fp16.tflite", "litert",
                "tumor_edge.export.formats.tflite_fp16:convert", enabled_by="fp16", default_rank=3),
    ModelFormat("tflite-int8", "tflite", "int8", "model_int8.tflite", "litert",
                "tumor_edge.export.formats.tflite_int8:convert", enabled_by="int8", default_rank=2,
                background=True),
)

BY_KEY: dict[str, ModelFormat] = {f.key: f for f in FORMATS}
BY_FILE: dict[str, ModelFormat] = {f.file: f for f in FORMATS}

# The --formats choices, in table order.
CONTAINERS: tuple[str, ...] = tuple(dict.fromkeys(f.format for f in FORMATS))
# The export options that add formats.
ENABLING_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.enabled_by for f in FORMATS if f.enabled_by))
# Bundle file names a device tries, in order, when told only the bundle.
DEFAULT_MODEL_PREFERENCE: tuple[str, ...] = tuple(
    f.file for f in sorted((f for f in FORMATS if f.default_rank is not None), key=lambda f: f.default_rank))
# Every model file name a bundle may hold.
BUNDLE_MODEL_FILES: tuple[str, ...] = tuple(f.file for f in FORMATS)


def format_of(file_name: str) -> ModelFormat | None:
    """The table row of a bundle file name, None for a file the table does not know."""
    return BY_FILE.get(file_name)


def engine_for_suffix(suffix: str) -> str | None:
    """The engine that runs files with this suffix (".onnx" -> "onnxruntime"), None if none does."""
    suffix = suffix.lower()
    return next((engine for engine, s in ENGINES.items() if s == suffix), None)


def select(containers: tuple[str, ...] | list[str], options: set[str] | frozenset[str]) -> list[ModelFormat]:
    """The rows an export makes for the chosen containers and enabling options, in dependency order."""
    return [f for f in FORMATS if f.format in containers and (f.enabled_by is None or f.enabled_by in options)]
