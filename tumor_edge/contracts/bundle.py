"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Export writes it; the runtime, bench, verify and serve read it. This module is the single definition of its
files and its metadata schema (field names follow MONAI's bundle metadata where they fit). Reading validates
the schema field by field, so hostile or damaged metadata becomes one line naming the field, never a traceback
or a silently wrong label.

Schema versions: 1 (tumor-edge 0.1) and 2 (0.2: adds `outputs`, the role of each model output, and
`reference`, the outputs every model gave on a small generated input set, which `tumor-edge verify` reproduces on
a device). A version-1 bundle reads as a version-2 bundle whose only output is the class scores.
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
from tumor_edge.errors import BundleIntegrityError, ConfigError, ModelError, first_line

METADATA_FILE = "metadata.json"
PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
MODEL_CARD = "MODEL_CARD.md"
RELIABILITY_PNG = "reliability.png"  # parity's reliability diagrams: one row per exported file, before/after scaling
# Files a bundle holds besides its models; `export --force` may replace these and nothing else.
BUNDLE_DOCUMENTS: tuple[str, ...] = (METADATA_FILE, PARITY_JSON, PARITY_MD, MODEL_CARD, RELIABILITY_PNG)

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
MAX_REFERENCE_IMAGES = 256
MAX_REFERENCE_VALUES = 1 << 16  # per file and role: a reference heatmap is a sample, not a dump
MAX_OUTPUT_INDEX = 64


@dataclass
class ReferenceSet:
    """The outputs each model of a bundle gave, on the export machine, for `count` images that any machine can
    regenerate bit for bit from (`generator`, `seed`) at the model's input size: so a device can prove its own
    kernels (AVX2, VNNI, ARM) reproduce the export machine's results without any patient image in the bundle.
    `outputs` maps a model file name to its class probabilities, one row per image. `roles` (0.2, optional: older
    bundles have scores only) maps a file name to its other outputs by role (a heatmap, OOD features), each
    {"shape": [images, ...], "values": [...]} flattened in C order, for the first `shape[0]` images."""

    generator: str
    seed: int
    count: int
    outputs: dict[str, list[list[float]]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)  # where the outputs were computed (CPU, ISA, versions)
    roles: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"generator": self.generator, "seed": self.seed, "count": self.count, "outputs": self.outputs,
                "machine": self.machine}
        if self.roles:
            data["roles"] = self.roles
        return data


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
    reference: ReferenceSet | None = None  # outputs on generated inputs, for `verify` (None: not recorded)
    # Trust (schema 2, optional; the runtime validates the contents, tumor_edge.runtime.trust):
    calibration: dict[str, Any] | None = None  # temperature scaling fitted on the validation split, its ECE
    ood: dict[str, Any] | None = None  # out-of-distribution fit: class centres, threshold, measured rates

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
        data = {
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
        if self.reference is not None:
            data["reference"] = self.reference.to_dict()
        for key in ("calibration", "ood"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> BundleMetadata:
        """Validate and read metadata; any problem is a ModelError naming the field."""
        try:
            return _parse(data)
        except RecursionError as err:  # JSON nested deeper than Python recurses
            raise ModelError("invalid tumor-edge metadata: nested too deeply", source) from err
        except ConfigError as err:  # field names come from the file: escape them so the error stays one line
            raise ModelError(f"invalid tumor-edge metadata: {printable(err.reason)}", source) from err

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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"unreadable metadata ({first_line(err)})", path) from err
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
    if not all(isinstance(c, str) and c.strip() and len(c) <= 200 for c in classes):
        raise ConfigError("field 'classes' must hold non-empty strings of at most 200 characters")
    if len(set(classes)) != len(classes):
        raise ConfigError("field 'classes' names a class twice")
    preprocessing = _preprocessing(_require(data, "preprocessing", dict))
    output = data.get("output", "probabilities")
    if isinstance(output, dict):
        output = output.get("type", "probabilities")
    if not isinstance(output, str) or output not in OUTPUT_TYPES:
        raise ConfigError(f"field 'output.type' must be one of {', '.join(OUTPUT_TYPES)}, not {output!r}"[:300])
    extra_outputs = _parse_outputs(data.get("outputs"), output)
    models = {}
    raw_models = _require(data, "models", dict) if "models" in data else {}
    for name, entry in raw_models.items():
        models[name] = _parse_entry(name, entry)
    for key in ("provenance", "metrics"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"field '{key}' must be an object")
    for key in ("calibration", "ood"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"field '{key}' must be an object")
    for key in ("name", "intended_use"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"field '{key}' must be a string")
    reference = (_parse_reference(data["reference"], models, len(classes), set(extra_outputs))
                 if data.get("reference") else None)
    return BundleMetadata(
        classes=list(classes), preprocessing=preprocessing, output=output, models=models,
        provenance=dict(data.get("provenance") or {}), metrics=dict(data.get("metrics") or {}),
        name=str(data.get("name", BundleMetadata.name)), intended_use=str(data.get("intended_use", RESEARCH_NOTICE)),
        extra_outputs=extra_outputs, reference=reference, calibration=data.get("calibration"),
        ood=data.get("ood"))


def _preprocessing(data: dict) -> Preprocessing:
    try:
        return Preprocessing.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"field 'preprocessing': {err.reason}") from err
    except (TypeError, ValueError, OverflowError) as err:  # values the spec's own checks do not anticipate
        raise ConfigError(f"field 'preprocessing' is invalid ({first_line(err)})") from err


def _parse_outputs(raw: Any, scores_type: str) -> dict[str, OutputSpec]:
    """`outputs`: role -> {index, type, description}. The scores stay at the role 'scores'; other roles are
    free names (a heatmap, features) at distinct indices."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"field 'outputs' must be an object, not {type(raw).__name__}")
    extra: dict[str, OutputSpec] = {}
    used = {0}
    for role, spec in raw.items():
        where = f"outputs.{str(role)[:40]}"
        if not isinstance(spec, dict):
            raise ConfigError(f"field '{where}' must be an object")
        if role == "scores":
            if spec.get("index", 0) != 0 or spec.get("type", scores_type) != scores_type:
                raise ConfigError("field 'outputs.scores' must be output 0 of the type 'output' names")
            continue
        if not role or len(role) > 40 or not all(c.isalnum() or c in "_-" for c in role):
            raise ConfigError(f"field '{where}': output roles are short names of letters, digits, '_' or '-'")
        index = spec.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= MAX_OUTPUT_INDEX:
            raise ConfigError(f"field '{where}' must be an object with a whole 'index' from 1 to {MAX_OUTPUT_INDEX}")
        if index in used:
            raise ConfigError(f"field '{where}' reuses output index {index}")
        used.add(index)
        for key in ("type", "description"):
            if key in spec and not isinstance(spec[key], str):
                raise ConfigError(f"field '{where}.{key}' must be a string")
        extra[role] = OutputSpec(role, index, spec.get("type", ""), spec.get("description", ""))
    return extra


def _parse_reference(raw: Any, models: dict[str, ModelEntry], n_classes: int, roles: set[str] = frozenset()
                     ) -> ReferenceSet:
    if not isinstance(raw, dict):
        raise ConfigError(f"field 'reference' must be an object, not {type(raw).__name__}")
    generator = _require(raw, "generator", str, "reference.")
    seed = _require(raw, "seed", int, "reference.")
    count = _require(raw, "count", int, "reference.")
    if not 0 <= seed < 2 ** 63:
        raise ConfigError("field 'reference.seed' must be from 0 to 2**63-1")
    if not 1 <= count <= MAX_REFERENCE_IMAGES:
        raise ConfigError(f"field 'reference.count' must be from 1 to {MAX_REFERENCE_IMAGES}")
    outputs = _require(raw, "outputs", dict, "reference.")
    clean: dict[str, list[list[float]]] = {}
    for name, rows in outputs.items():
        if name not in models:
            raise ConfigError(f"field 'reference.outputs' names {str(name)[:80]!r}, which 'models' does not list")
        if (not isinstance(rows, list) or len(rows) != count
                or not all(isinstance(r, list) and len(r) == n_classes and all(_is_probability(v) for v in r)
                           for r in rows)):
            raise ConfigError(f"field 'reference.outputs.{name}' must hold {count} rows of {n_classes} "
                              f"probabilities")
        clean[name] = [[float(v) for v in r] for r in rows]
    machine = raw.get("machine", {})
    if not isinstance(machine, dict):
        raise ConfigError("field 'reference.machine' must be an object")
    return ReferenceSet(generator, seed, count, clean, machine, _parse_reference_roles(raw.get("roles"), models,
                                                                                        count, roles))


def _parse_reference_roles(raw: Any, models: dict[str, ModelEntry], count: int, roles: set[str]
                           ) -> dict[str, dict[str, dict[str, list]]]:
    """`reference.roles`: file -> role -> {"shape", "values"}; roles must be outputs the metadata declares."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("field 'reference.roles' must be an object")
    clean: dict[str, dict[str, dict[str, list]]] = {}
    for name, by_role in raw.items():
        if name not in models:
            raise ConfigError(f"field 'reference.roles' names {str(name)[:80]!r}, which 'models' does not list")
        if not isinstance(by_role, dict):
            raise ConfigError(f"field 'reference.roles.{name}' must be an object")
        clean[name] = {}
        for role, entry in by_role.items():
            where = f"reference.roles.{name}.{str(role)[:40]}"
            if role not in roles:
                raise ConfigError(f"field '{where}' is not an output role 'outputs' declares")
            shape = entry.get("shape") if isinstance(entry, dict) else None
            values = entry.get("values") if isinstance(entry, dict) else None
            if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
                    or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
                    or not shape[0] <= count or not isinstance(values, list) or len(values) > MAX_REFERENCE_VALUES):
                raise ConfigError(f"field '{where}' must be {{shape: [images, ...] (images <= {count}), values: "
                                  f"at most {MAX_REFERENCE_VALUES} numbers}}")
            size = 1
            for d in shape:
                size *= d
            if size != len(values) or not all(_is_finite(v) for v in values):
                raise ConfigError(f"field '{where}' must hold as many finite numbers as its shape says")
            clean[name][role] = {"shape": list(shape), "values": [float(v) for v in values]}
    return clean


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _parse_entry(name: str, entry: Any) -> ModelEntry:
    where = f"models.{name}."
    try:
        check_member_name(name)
    except BundleIntegrityError as err:
        raise ConfigError(f"field 'models': {err.reason}") from err
    if not isinstance(entry, dict):
        raise ConfigError(f"field 'models.{name}' must be an object")
    entry = dict(entry)
    fmt = _require(entry, "format", str, where)
    if fmt not in {s.lstrip(".") for s in ENGINES.values()}:
        raise ConfigError(f"field '{where}format' names an unknown format {fmt[:40]!r}")
    if not name.lower().endswith("." + fmt):
        raise ConfigError(f"field '{where}format' is {fmt!r} but the file name does not end in .{fmt}")
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
    for key in ("ort_optimized_from",):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"field '{where}{key}' must be a string")
    return ModelEntry(name, fmt, precision, size, digest.lower(), entry)


def printable(text: str) -> str:
    """`text` with control characters (newlines, escapes) written as Python escapes: safe on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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


def check_model_file(bundle_dir: Path, name: str, metadata: BundleMetadata, check_hash: bool = True
                     ) -> tuple[Path, str]:
    """(path, sha256) of a model listed in the bundle, after proving it is the file the metadata describes:
    a plain name confined to the folder, listed, present, of the recorded size and (unless `check_hash` is off)
    the recorded sha256. Anything else is a one-line BundleIntegrityError (or ModelError when absent) raised
    before the model is opened, so a tampered, truncated or swapped model never produces a result. The sha256
    returned is the recorded one (verified unless check_hash is off)."""
    bundle_dir = Path(bundle_dir)
    entry = metadata.models.get(name) if isinstance(name, str) else None
    path = member_path(bundle_dir, name)
    if entry is None:
        if path.is_file():
            raise BundleIntegrityError(f"{name} is not listed in {METADATA_FILE}, so its integrity cannot be "
                                       f"checked; refusing to run it", bundle_dir)
        raise ModelError(f"no model file {name} in this bundle (metadata does not list it)", bundle_dir)
    if not path.is_file():
        raise ModelError(f"no model file {name} in this bundle (metadata lists it)", bundle_dir)
    if not entry.sha256:
        raise BundleIntegrityError(f"{METADATA_FILE} records no sha256 for it; refusing to run an unverifiable "
                                   f"model", path)
    size = path.stat().st_size
    if entry.size_bytes and size != entry.size_bytes:
        raise BundleIntegrityError(f"is {size} bytes but {METADATA_FILE} records {entry.size_bytes} (truncated or "
                                   f"replaced?); refusing to run it", path)
    if check_hash:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleIntegrityError(f"sha256 {digest[:12]}… differs from the {entry.sha256[:12]}… in "
                                       f"{METADATA_FILE} (tampered or damaged); refusing to run it", path)
    return path, entry.sha256


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
