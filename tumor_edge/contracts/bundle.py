"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Export writes it; the runtime, bench, verify and serve read it. This module is the single definition of its
files and its metadata schema (field names follow MONAI's bundle metadata where they fit). Reading validates
the schema field by field, so hostile or damaged metadata becomes one line naming the field, never a traceback
or a silently wrong label.

Schema versions: 1 (tumor-edge 0.1) and 2 (0.2: adds `outputs`, the role of each model output). A version-1
bundle reads as a version-2 bundle whose only output is the class scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.formats import DEFAULT_MODEL_PREFERENCE, ENGINES
from tumor_edge.contracts.preprocessing import SCALING_RANGES, Preprocessing
from tumor_edge.errors import BundleIntegrityError, ConfigError, ModelError

METADATA_FILE = "metadata.json"
PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
MODEL_CARD = "MODEL_CARD.md"
# Files a bundle holds besides its models; `export --force` may replace these and nothing else.
BUNDLE_DOCUMENTS: tuple[str, ...] = (METADATA_FILE, PARITY_JSON, PARITY_MD, MODEL_CARD)

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)

# Key of the metadata_props entry that carries the bundle metadata inside an exported .onnx file, so a lone
# .onnx classifies correctly on its own.
ONNX_META_KEY = "tumor_edge"

# A pre-optimised twin of an .onnx file, as 0.1 bundles carried them ("model_int8.onnx" ->
# "model_int8.ort.onnx"). Listed in `models` with extra {"ort_optimized_from": ...}; never a default model.
OPTIMIZED_SUFFIX = ".ort.onnx"

OUTPUT_TYPES = ("probabilities", "logits")
PRECISIONS = ("fp32", "fp16", "int8")
# Bounds that catch absurd metadata before it costs memory.
MAX_CLASSES = 1000
MAX_MODEL_BYTES = 8 << 30
MAX_METADATA_BYTES = 16 << 20


@dataclass(frozen=True)
class OutputSpec:
    """What one output of a model means. Role "scores" (class probabilities or logits) is always present;
    later roles (a heatmap, pooled features) are optional and a runtime that does not know them passes them on."""

    role: str
    index: int = 0  # position among the model file's outputs
    type: str = "probabilities"  # for "scores": "probabilities" | "logits"; free text for other roles
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"index": self.index, "type": self.type}
        if self.description:
            data["description"] = self.description
        return data


@dataclass
class ModelEntry:
    """One exported file of a bundle."""

    file: str
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "int8"
    size_bytes: int = 0
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "size_bytes": self.size_bytes,
                "sha256": self.sha256, **self.extra}


@dataclass
class BundleMetadata:
    """What a device needs to classify correctly with any file of the bundle."""

    classes: list[str]
    preprocessing: Preprocessing
    output: str = "probabilities"  # what output 0 (the class scores) is; logits get a softmax in the runtime
    models: dict[str, ModelEntry] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = "tumor-edge brain MRI classifier"
    intended_use: str = RESEARCH_NOTICE
    extra_outputs: dict[str, OutputSpec] = field(default_factory=dict)  # role -> spec, beyond the scores

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """Every model output by role, the class scores first."""
        scores = OutputSpec("scores", 0, self.output, "class scores in `classes` order")
        return {"scores": scores, **self.extra_outputs}

    def input_spec(self) -> dict[str, Any]:
        p = self.preprocessing
        return {"name": "image", "shape": [None, p.height, p.width, 3], "layout": "NHWC", "dtype": "float32",
                "value_range": SCALING_RANGES.get(p.scaling), "color_mode": p.color_mode}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "task": "image classification (brain MRI slice, one label of: " + ", ".join(self.classes) + ")",
            "classes": list(self.classes),
            "input": self.input_spec(),
            "preprocessing": self.preprocessing.to_dict(),
            "output": {"type": self.output, "shape": [None, len(self.classes)],
                       "yields": "probabilities (softmax applied by the runtime for logits)"},
            "outputs": {role: spec.to_dict() for role, spec in self.outputs.items()},
            "models": {name: entry.to_dict() for name, entry in self.models.items()},
            "provenance": self.provenance,
            "metrics": self.metrics,
            "intended_use": self.intended_use,
        }

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> BundleMetadata:
        """Validate and read metadata; any problem is a ModelError naming the field."""
        try:
            return _parse(data)
        except ConfigError as err:
            raise ModelError(f"invalid tumor-edge metadata: {err.reason}", source) from err

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, bundle_dir: Path) -> BundleMetadata:
        path = Path(bundle_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelError(f"not a tumor-edge bundle: no {METADATA_FILE}", bundle_dir)
        try:
            if path.stat().st_size > MAX_METADATA_BYTES:
                raise ModelError(f"metadata is larger than {MAX_METADATA_BYTES >> 20} MB", path)
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"unreadable metadata ({err})", path) from err
        return cls.from_dict(data, path)

    def default_model(self) -> str:
        for name in DEFAULT_MODEL_PREFERENCE:
            if name in self.models:
                return name
        plain = [name for name in self.models if not is_optimized_name(name)]
        if not plain:
            raise ModelError("bundle lists no models")
        return plain[0]


# ------------------------------------------------------------------------------------------- schema checks


def _require(data: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in data:
        raise ConfigError(f"field '{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"field '{where}{key}' must be {_article(names)}, not {type(value).__name__}")
    return value


def _article(name: str) -> str:
    return {"dict": "an object", "list": "a list", "str": "a string", "int": "a whole number"}.get(name, name)


def _parse(data: Any) -> BundleMetadata:
    if not isinstance(data, dict):
        raise ConfigError(f"the metadata must be a JSON object, not {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ConfigError(f"schema_version {version!r} is not one this tumor-edge reads "
                          f"({', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); upgrade tumor-edge")
    classes = _require(data, "classes", list)
    if not classes or len(classes) > MAX_CLASSES:
        raise ConfigError(f"field 'classes' must list 1 to {MAX_CLASSES} names, not {len(classes)}")
    if not all(isinstance(c, str) and c.strip() for c in classes):
        raise ConfigError("field 'classes' must hold non-empty strings")
    if len(set(classes)) != len(classes):
        raise ConfigError("field 'classes' names a class twice")
    preprocessing = Preprocessing.from_dict(_require(data, "preprocessing", dict))
    output = data.get("output", "probabilities")
    if isinstance(output, dict):
        output = output.get("type", "probabilities")
    if output not in OUTPUT_TYPES:
        raise ConfigError(f"field 'output.type' must be one of {', '.join(OUTPUT_TYPES)}, not {output!r}")
    extra_outputs = {}
    for role, spec in (data.get("outputs") or {}).items():
        if role == "scores":
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("index"), int) or spec["index"] < 1:
            raise ConfigError(f"field 'outputs.{role}' must be an object with a whole 'index' of 1 or more")
        extra_outputs[str(role)] = OutputSpec(str(role), spec["index"], str(spec.get("type", "")),
                                              str(spec.get("description", "")))
    models = {}
    raw_models = _require(data, "models", dict) if "models" in data else {}
    for name, entry in raw_models.items():
        models[name] = _parse_entry(name, entry)
    for key in ("provenance", "metrics"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"field '{key}' must be an object")
    return BundleMetadata(
        classes=list(classes), preprocessing=preprocessing, output=output, models=models,
        provenance=dict(data.get("provenance") or {}), metrics=dict(data.get("metrics") or {}),
        name=str(data.get("name", BundleMetadata.name)), intended_use=str(data.get("intended_use", RESEARCH_NOTICE)),
        extra_outputs=extra_outputs)


def _parse_entry(name: str, entry: Any) -> ModelEntry:
    where = f"models.{name}."
    check_member_name(name)
    if not isinstance(entry, dict):
        raise ConfigError(f"field 'models.{name}' must be an object")
    entry = dict(entry)
    fmt = _require(entry, "format", str, where)
    if fmt not in {s.lstrip(".") for s in ENGINES.values()}:
        raise ConfigError(f"field '{where}format' names an unknown format {fmt!r}")
    precision = _require(entry, "precision", str, where)
    if precision not in PRECISIONS:
        raise ConfigError(f"field '{where}precision' must be one of {', '.join(PRECISIONS)}")
    size = entry.pop("size_bytes", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MODEL_BYTES:
        raise ConfigError(f"field '{where}size_bytes' must be a whole number of bytes up to {MAX_MODEL_BYTES}")
    digest = entry.pop("sha256", "")
    if not isinstance(digest, str) or digest and (len(digest) != 64 or not _is_hex(digest)):
        raise ConfigError(f"field '{where}sha256' must be 64 hexadecimal digits")
    entry.pop("format"), entry.pop("precision")
    return ModelEntry(name, fmt, precision, size, digest.lower(), entry)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def check_member_name(name: str) -> str:
    """A file name listed in metadata must be a plain name inside the bundle: no folders, no '..', no
    absolute path, no drive, nothing hidden. Anything else is refused before it is opened."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or name.startswith(".") or os.path.isabs(name) or ":" in name):
        raise BundleIntegrityError(f"model name {name!r} is not a plain file name inside the bundle")
    return name


def member_path(bundle_dir: Path, name: str) -> Path:
    """The path of a listed file, confined to the bundle folder (symbolic links that leave it are refused)."""
    check_member_name(name)
    root = Path(bundle_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise BundleIntegrityError(f"{name} resolves outside the bundle folder", bundle_dir)
    return root / name


# ---------------------------------------------------------------------------------------------- file facts


def optimized_model_name(name: str) -> str:
    """The file name of the pre-optimised twin of an .onnx model file."""
    stem = name[:-len(".onnx")] if name.lower().endswith(".onnx") else name
    return stem + OPTIMIZED_SUFFIX


def is_optimized_name(name: str) -> bool:
    return name.lower().endswith(OPTIMIZED_SUFFIX)


def sha256_file(path: Path) -> str:
    # hashlib loads OpenSSL (+3.6 MB resident): imported where a hash is needed, not on every import.
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(path: Path, fmt: str, precision: str, **extra: Any) -> ModelEntry:
    path = Path(path)
    return ModelEntry(path.name, fmt, precision, path.stat().st_size, sha256_file(path), dict(extra))
