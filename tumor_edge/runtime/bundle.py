"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Field names follow MONAI's bundle metadata where they fit. `export` writes it, the runtime and `bench` read it;
this module is the single definition of the format for both sides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.errors import ModelError
from tumor_edge.runtime.preprocess import Preprocessing

METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 1

# Keys written into an ONNX file's metadata_props so a lone .onnx classifies correctly on its own.
ONNX_META_KEY = "tumor_edge"

# A pre-optimised twin of an .onnx file (see backends.save_optimized_model): "model_int8.onnx" ->
# "model_int8.ort.onnx". Export writes it beside its source; the runtime loads it instead when it was made for the
# same machine, skipping onnxruntime's graph optimisation at start-up. Export may list it in `models` with
# extra {"ort_optimized_from": "model_int8.onnx"}; it is never the default model itself.
OPTIMIZED_SUFFIX = ".ort.onnx"

# Which file a runtime picks when the caller names a bundle but not a file: smallest that proved parity first.
DEFAULT_MODEL_PREFERENCE = ("model_int8.onnx", "model_fp32.onnx", "model_int8.tflite", "model_fp16.tflite",
                            "model_fp32.tflite")


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
    output: str = "probabilities"  # or "logits": the runtime applies softmax then
    models: dict[str, ModelEntry] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = "tumor-edge brain MRI classifier"
    intended_use: str = RESEARCH_NOTICE

    def input_spec(self) -> dict[str, Any]:
        p = self.preprocessing
        value_range = {"none": [0, 255], "unit": [0, 1], "symmetric": [-1, 1]}.get(p.scaling)
        return {"name": "image", "shape": [None, p.height, p.width, 3], "layout": "NHWC", "dtype": "float32",
                "value_range": value_range, "color_mode": p.color_mode}

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
            "models": {name: entry.to_dict() for name, entry in self.models.items()},
            "provenance": self.provenance,
            "metrics": self.metrics,
            "intended_use": self.intended_use,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> BundleMetadata:
        try:
            models = {}
            for name, entry in (data.get("models") or {}).items():
                entry = dict(entry)
                fmt, precision = entry.pop("format"), entry.pop("precision")
                size, digest = int(entry.pop("size_bytes", 0)), str(entry.pop("sha256", ""))
                models[name] = ModelEntry(name, fmt, precision, size, digest, entry)
            output = data.get("output", "probabilities")
            if isinstance(output, dict):
                output = output.get("type", "probabilities")
            classes = [str(c) for c in data["classes"]]
            if not classes:
                raise ValueError("'classes' is empty")
            return cls(
                classes=classes,
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                output=output,
                models=models,
                provenance=dict(data.get("provenance") or {}),
                metrics=dict(data.get("metrics") or {}),
                name=data.get("name", cls.name),
                intended_use=data.get("intended_use", RESEARCH_NOTICE),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"invalid tumor-edge metadata ({type(err).__name__}: {err})", source) from err

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
            data = json.loads(path.read_text())
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


def optimized_model_name(name: str) -> str:
    """The file name of the pre-optimised twin of an .onnx model file."""
    stem = name[:-len(".onnx")] if name.lower().endswith(".onnx") else name
    return stem + OPTIMIZED_SUFFIX


def is_optimized_name(name: str) -> bool:
    return name.lower().endswith(OPTIMIZED_SUFFIX)


def sha256_file(path: Path) -> str:
    # hashlib loads OpenSSL (+3.6 MB resident): imported here, where export needs it, not on every classify.
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(path: Path, fmt: str, precision: str, **extra: Any) -> ModelEntry:
    path = Path(path)
    return ModelEntry(path.name, fmt, precision, path.stat().st_size, sha256_file(path), dict(extra))


def default_bundle_home() -> Path:
    """Where `export` records the last bundle so `classify` works with no flags afterwards."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tumor-edge"


def remember_last_bundle(bundle_dir: Path) -> None:
    home = default_bundle_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "last_bundle").write_text(str(Path(bundle_dir).resolve()) + "\n")


def resolve_model_path(model: str | Path | None) -> Path:
    """--model, else $TUMOR_EDGE_MODEL, else the bundle `export` wrote last."""
    if model:
        return Path(model)
    env = os.environ.get("TUMOR_EDGE_MODEL")
    if env:
        return Path(env)
    marker = default_bundle_home() / "last_bundle"
    if marker.is_file():
        return Path(marker.read_text().strip())
    raise ModelError("no model given: pass --model BUNDLE (or a .onnx file), set TUMOR_EDGE_MODEL, "
                     "or run `tumor-edge export` first")
