"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Export writes it; the runtime, bench, verify and serve read it. Hostile or damaged metadata becomes one line
naming the field, never a traceback or a silently wrong label. Field names follow MONAI's bundle metadata where
they fit. A version-1 bundle reads as a version-2 bundle whose only output is the class scores. A bundle listing
an optimised twin of a model (`*.ort.onnx`, a file made for one machine) is refused.

Integrity: no file of a bundle is read unless metadata.json lists it with its sha256 (models, their external
data), no listed file may resolve outside the bundle folder, and what a model file carries about itself must
agree with metadata.json (`check_binding`).
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.formats import (
    DEFAULT_MODEL_PREFERENCE,
    ENGINES,
    engine_for_suffix,
    format_names,
    format_suffixes,
)
from tumor_edge.contracts.preprocessing import SCALING_RANGES, Preprocessing
from tumor_edge.errors import BundleIntegrityError, ConfigError, ModelError, TumorEdgeError, first_line, one_line

METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)

# The name an optimised twin of an .onnx file has ("model_int8.onnx" -> "model_int8.ort.onnx").
OPTIMIZED_SUFFIX = ".ort.onnx"

SCORES = "scores"  # the role of the class-score output, always output 0
OUTPUT_TYPES = ("probabilities", "logits")
PRECISIONS = ("fp32", "fp16", "int8")
# Bounds that catch absurd metadata before it costs memory.
MAX_CLASSES = 1000
MAX_MODEL_BYTES = 8 << 30
MAX_MEMBER_FILES = 64  # external data files of one model
MAX_METADATA_BYTES = 16 << 20
MAX_REFERENCE_IMAGES = 256
MAX_REFERENCE_VALUES = 1 << 16  # per file and role: a reference heatmap is a sample, not a dump
MAX_OUTPUT_INDEX = 64



@dataclass
class ReferenceSet:
    """The outputs each model of a bundle gave, on the export machine, for `count` images that any machine can
    regenerate bit for bit from (`generator`, `seed`) at the model's input size: so a device can prove its own
    kernels (AVX2, VNNI, ARM) reproduce the export machine's results without any patient image in the bundle.
    `outputs` maps a model file name to its class probabilities, one row per image. `roles` (optional: a bundle
    may have scores only) maps a file name to its other outputs by role (a heatmap, OOD features), each
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


@dataclass(frozen=True)
class MemberFile:
    """A file a model needs besides itself (an ONNX model's external data), hashed like the model."""

    name: str
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "sha256": self.sha256}


@dataclass
class ModelEntry:
    """One exported file of a bundle, and (`files`, optional) every other file it reads: without them listed and
    hashed, a model's external data could be replaced under a model whose own hash still matched."""

    file: str
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "int8"
    size_bytes: int = 0
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, MemberFile] = field(default_factory=dict)  # name -> the file, for external data

    def to_dict(self) -> dict[str, Any]:
        data = {"format": self.format, "precision": self.precision, "size_bytes": self.size_bytes,
                "sha256": self.sha256, **self.extra}
        if self.files:  # absent when there are none: metadata stays what older readers wrote and read
            data["files"] = {name: member.to_dict() for name, member in self.files.items()}
        return data


RELEASE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Release:
    """Which bundle this is and when it was made, inside what a signature covers: a trusted key pinned to a
    minimum version refuses an older bundle signed with the same key, and an identity tells two bundles apart."""

    id: str
    version: str  # the UTC time of export, RELEASE_TIME_FORMAT: a later export sorts later, as text and as time

    @classmethod
    def new(cls) -> Release:
        import uuid

        return cls(uuid.uuid4().hex, datetime.now(timezone.utc).strftime(RELEASE_TIME_FORMAT))

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version}


def parse_release_version(text: Any, where: str = "release.version") -> datetime:
    """A release version as a time; ConfigError naming `where` when it is not one."""
    try:
        return datetime.strptime(text, RELEASE_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"field '{where}' must be a UTC time like 2026-12-07T14:00:00Z, not "
                          f"{str(text)[:40]!r}") from err


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
    release: Release | None = field(default_factory=Release.new)  # None: a bundle exported without one
    # sha256 of the metadata.json bytes this record was parsed from ("" when not read from a file): what a
    # signature's digest of metadata.json is compared with, so the record in use is the one signed.
    sha256: str = field(default="", compare=False, repr=False)

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """Every model output by role, the class scores first."""
        scores = OutputSpec(SCORES, 0, self.output, "class scores in `classes` order")
        return {SCORES: scores, **self.extra_outputs}

    def to_dict(self) -> dict[str, Any]:
        p = self.preprocessing
        data = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "task": "image classification (brain MRI slice, one label of: " + ", ".join(self.classes) + ")",
            "classes": list(self.classes),
            "input": {"name": "image", "shape": [None, p.height, p.width, 3], "layout": "NHWC", "dtype": "float32",
                      "value_range": SCALING_RANGES.get(p.scaling), "color_mode": p.color_mode},
            "preprocessing": p.to_dict(),
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
        if self.release is not None:
            data["release"] = self.release.to_dict()
        for key in ("calibration", "ood"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> BundleMetadata:
        """Validate and read metadata; any problem is a ModelError naming the field."""
        try:
            return parse_metadata(data)
        except RecursionError as err:  # JSON nested deeper than Python recurses
            raise ModelError("invalid tumor-edge metadata: nested too deeply", source) from err
        except ConfigError as err:  # field names come from the file: escape them so the error stays one line
            raise ModelError(f"invalid tumor-edge metadata: {one_line(err.reason)}", source) from err

    def write(self, bundle_dir: Path) -> None:
        (Path(bundle_dir) / METADATA_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, bundle_dir: Path) -> BundleMetadata:
        """Read and validate a bundle's metadata.json, read once as a plain file (a symbolic link is refused), with
        duplicate keys refused (JSON would silently keep the last `classes`). The record keeps the sha256 of the
        bytes it was parsed from."""
        import hashlib

        path = Path(bundle_dir) / METADATA_FILE
        if not path.exists() and not path.is_symlink():
            raise ModelError(f"not a tumor-edge bundle: no {METADATA_FILE}", bundle_dir)
        try:
            raw = read_confined(bundle_dir, METADATA_FILE, MAX_METADATA_BYTES)
            data = loads_strict(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"unreadable metadata ({first_line(err)})", path) from err
        except ConfigError as err:
            raise ModelError(f"invalid tumor-edge metadata: {one_line(err.reason)}", path) from err
        metadata = cls.from_dict(data, path)
        metadata.sha256 = hashlib.sha256(raw).hexdigest()
        return metadata

    def default_model(self) -> str:
        if not self.models:
            raise ModelError("bundle lists no models")
        return next((name for name in DEFAULT_MODEL_PREFERENCE if name in self.models), next(iter(self.models)))


def loads_strict(text: str) -> Any:
    """json.loads, refusing an object that names a key twice (a ConfigError naming the key): metadata whose
    meaning depends on which of two `classes` lists a parser keeps is not metadata."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                raise ConfigError(f"duplicate key {key[:80]!r} in a JSON object")
            obj[key] = value
        return obj

    return json.loads(text, object_pairs_hook=pairs)


def is_sha256(text: Any) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def check_member_name(name: str, error: type[TumorEdgeError] = BundleIntegrityError, where: str = "") -> None:
    """A file name listed in metadata must be a plain name inside the bundle: no folders, no '..', no
    absolute path, no drive, nothing hidden. Anything else is refused (`error`) before it is opened."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or name.startswith(".") or os.path.isabs(name) or ":" in name):
        raise error(f"{where}model name {name!r} is not a plain file name inside the bundle")


def member_path(bundle_dir: Path, name: str) -> Path:
    """The path of a listed file, confined to the bundle folder (symbolic links that leave it are refused)."""
    check_member_name(name)
    root = Path(bundle_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise BundleIntegrityError(f"{name} resolves outside the bundle folder", bundle_dir)
    return root / name


def read_confined(bundle_dir: Path, name: str, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """The whole content of a bundle's file, read once from a descriptor opened without following a symbolic link
    (O_NOFOLLOW) and without blocking on a FIFO, checked to be a regular file of at most `max_bytes`. Whoever
    hashes these bytes and hands the same bytes on has checked what runs, whatever the folder holds a moment later.
    BundleIntegrityError for a link or a special file, ModelError for one too large; OSError when unreadable."""
    import errno

    check_member_name(name)
    path = Path(bundle_dir) / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BundleIntegrityError("a symbolic link: a bundle's files are read as plain files only", path
                                       ) from err
        raise
    with os.fdopen(fd, "rb", buffering=0) as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleIntegrityError("not a regular file (a FIFO, socket or device)", path)
        if info.st_size > max_bytes:
            raise ModelError(f"larger than the {max_bytes >> 20} MB a bundle's file may be", path)
        data = fh.read(info.st_size)
        if len(data) != info.st_size or fh.read(1):
            raise BundleIntegrityError("changed size while it was read; refusing to use it", path)
    return data


def is_optimized_name(name: str) -> bool:
    """Whether `name` is an optimised twin's (see OPTIMIZED_SUFFIX)."""
    return name.lower().endswith(OPTIMIZED_SUFFIX)


_ARTICLES = {"dict": "an object", "list": "a list", "str": "a string", "int": "a whole number"}


def _require(data: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in data:
        raise ConfigError(f"field '{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"field '{where}{key}' must be {_ARTICLES.get(names, names)}, not {type(value).__name__}")
    return value


def parse_metadata(data: Any) -> BundleMetadata:
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
    raw_preprocessing = _require(data, "preprocessing", dict)
    try:
        preprocessing = Preprocessing.from_dict(raw_preprocessing)
    except ConfigError as err:
        raise ConfigError(f"field 'preprocessing': {err.reason}") from err
    except (TypeError, ValueError, OverflowError) as err:  # values the spec's own checks do not anticipate
        raise ConfigError(f"field 'preprocessing' is invalid ({first_line(err)})") from err
    output = data.get("output", "probabilities")
    if isinstance(output, dict):
        output = output.get("type", "probabilities")
    if not isinstance(output, str) or output not in OUTPUT_TYPES:
        raise ConfigError(f"field 'output.type' must be one of {', '.join(OUTPUT_TYPES)}, not {output!r}"[:300])
    extra_outputs = _parse_outputs(data.get("outputs"), output)
    raw_models = _require(data, "models", dict) if "models" in data else {}
    models = {name: _parse_entry(name, entry) for name, entry in raw_models.items()}
    for key, kind in (("provenance", dict), ("metrics", dict), ("name", str), ("intended_use", str)):
        if key in data and not isinstance(data[key], kind):
            raise ConfigError(f"field '{key}' must be {_ARTICLES[kind.__name__]}")
    for key in ("calibration", "ood"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"field '{key}' must be an object")
    reference = (_parse_reference(data["reference"], models, len(classes), set(extra_outputs))
                 if data.get("reference") else None)
    release = _parse_release(data["release"]) if "release" in data else None
    return BundleMetadata(
        classes=list(classes), preprocessing=preprocessing, output=output, models=models,
        provenance=dict(data.get("provenance") or {}), metrics=dict(data.get("metrics") or {}),
        name=str(data.get("name", BundleMetadata.name)), intended_use=str(data.get("intended_use", RESEARCH_NOTICE)),
        extra_outputs=extra_outputs, reference=reference, calibration=data.get("calibration"),
        ood=data.get("ood"), release=release)


def _parse_release(raw: Any) -> Release:
    if not isinstance(raw, dict):
        raise ConfigError("field 'release' must be an object")
    ident = _require(raw, "id", str, "release.")
    if not 1 <= len(ident) <= 64 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in ident):
        raise ConfigError("field 'release.id' must be 1 to 64 letters, digits, '.', '_' or '-'")
    version = _require(raw, "version", str, "release.")
    parse_release_version(version)
    return Release(ident, version)


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
        if role == SCORES:
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
                or not all(isinstance(r, list) and len(r) == n_classes and all(_is_number(v, 0.0, 1.0) for v in r)
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
            shape, values = (entry.get("shape"), entry.get("values")) if isinstance(entry, dict) else (None, None)
            if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
                    or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
                    or not shape[0] <= count or not isinstance(values, list) or len(values) > MAX_REFERENCE_VALUES):
                raise ConfigError(f"field '{where}' must be {{shape: [images, ...] (images <= {count}), values: "
                                  f"at most {MAX_REFERENCE_VALUES} numbers}}")
            if math.prod(shape) != len(values) or not all(_is_number(v) for v in values):
                raise ConfigError(f"field '{where}' must hold as many finite numbers as its shape says")
            clean[name][role] = {"shape": list(shape), "values": [float(v) for v in values]}
    return clean


def _is_number(value: Any, low: float = -sys.float_info.max, high: float = sys.float_info.max) -> bool:
    """A JSON number from `low` to `high`; by default one a float can hold: an integer past float's range is
    refused here, not at `float(v)`."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _parse_entry(name: str, entry: Any) -> ModelEntry:
    where = f"models.{name}."
    check_member_name(name, ConfigError, "field 'models': ")
    if is_optimized_name(name) or isinstance(entry, dict) and "ort_optimized_from" in entry:
        raise ConfigError(f"field 'models' lists {name!r}, an optimised copy made for one machine, which this "
                          "tumor-edge does not run: re-export the bundle with `tumor-edge export`")
    if not isinstance(entry, dict):
        raise ConfigError(f"field 'models.{name}' must be an object")
    entry = dict(entry)
    fmt = _require(entry, "format", str, where)
    if fmt not in format_names():
        raise ConfigError(f"field '{where}format' names an unknown format {fmt[:40]!r}")
    suffixes = format_suffixes(fmt)
    if not name.lower().endswith(suffixes):
        raise ConfigError(f"field '{where}format' is {fmt!r} but the file name does not end in "
                          f"{' or '.join(suffixes)}")
    precision = _require(entry, "precision", str, where)
    if precision not in PRECISIONS:
        raise ConfigError(f"field '{where}precision' must be one of {', '.join(PRECISIONS)}")
    size = entry.pop("size_bytes", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MODEL_BYTES:
        raise ConfigError(f"field '{where}size_bytes' must be a whole number of bytes up to {MAX_MODEL_BYTES}")
    digest = entry.pop("sha256", "")
    if digest != "" and not is_sha256(digest):
        raise ConfigError(f"field '{where}sha256' must be 64 hexadecimal digits")
    entry.pop("format"), entry.pop("precision")
    files = _parse_files(name, entry.pop("files", None))
    return ModelEntry(name, fmt, precision, size, digest.lower(), entry, files)


def _parse_files(model: str, raw: Any) -> dict[str, MemberFile]:
    """`models.<file>.files` (optional): name -> {size_bytes, sha256} for each other file the model reads."""
    where = f"models.{model}.files"
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_MEMBER_FILES:
        raise ConfigError(f"field '{where}' must be an object of at most {MAX_MEMBER_FILES} files")
    files: dict[str, MemberFile] = {}
    for name, spec in raw.items():
        check_member_name(name, ConfigError, f"field '{where}': ")
        if name in (model, METADATA_FILE):
            raise ConfigError(f"field '{where}' names {name!r}, which is not a data file of the model")
        size, digest = (spec.get("size_bytes"), spec.get("sha256")) if isinstance(spec, dict) else (None, None)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MODEL_BYTES:
            raise ConfigError(f"field '{where}.{name}.size_bytes' must be a whole number of bytes up to "
                              f"{MAX_MODEL_BYTES}")
        if not is_sha256(digest):
            raise ConfigError(f"field '{where}.{name}.sha256' must be 64 hexadecimal digits")
        files[name] = MemberFile(name, size, digest.lower())
    return files


PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
MODEL_CARD = "MODEL_CARD.md"
RELIABILITY_PNG = "reliability.png"  # parity's reliability diagrams: one row per exported file, before/after scaling
# Files a bundle holds besides its models; `export --force` may replace these and nothing else.
BUNDLE_DOCUMENTS: tuple[str, ...] = (METADATA_FILE, PARITY_JSON, PARITY_MD, MODEL_CARD, RELIABILITY_PNG)

# Key of the metadata_props entry that carries the bundle metadata inside an exported .onnx file, so a lone
# .onnx classifies correctly on its own.
ONNX_META_KEY = "tumor_edge"


@dataclass(frozen=True)
class ModelFiles:
    """A listed model's bytes and those of every file it reads besides itself, each read once and proved against
    metadata.json: what an engine is handed, so what runs is what was checked."""

    path: Path
    data: bytes
    members: dict[str, bytes]  # external data and companion files by name
    digests: dict[str, str]  # file name -> sha256 of the bytes read (the model and each member)


def read_model_files(bundle_dir: Path, name: str, metadata: BundleMetadata) -> ModelFiles:
    """A model listed in the bundle and its member files, read once each (`read_confined`) and proved to be the
    files the metadata describes: a plain name confined to the folder, listed with a sha256, present, of the
    recorded size and sha256. Anything else is a one-line BundleIntegrityError (or ModelError when absent), so a
    tampered, truncated or swapped model never produces a result."""
    bundle_dir = Path(bundle_dir)
    entry = metadata.models.get(name) if isinstance(name, str) else None
    path = member_path(bundle_dir, name)
    if entry is None:
        if path.is_file():
            raise BundleIntegrityError(f"{name} is not listed in {METADATA_FILE}, so its integrity cannot be "
                                       f"checked; refusing to run it", bundle_dir)
        raise ModelError(f"no model file {name} in this bundle (metadata does not list it)", bundle_dir)
    if not entry.sha256:
        raise BundleIntegrityError(f"{METADATA_FILE} records no sha256 for it; refusing to run an unverifiable "
                                   f"model", path)
    for companion in companion_files(name):
        if companion not in entry.files:
            raise BundleIntegrityError(f"{companion} (its engine reads it beside this file) is not listed with it "
                                       f"in {METADATA_FILE}, so its integrity cannot be checked; refusing to run it",
                                       path)
    data = _read_listed(bundle_dir, name, f"no model file {name} in this bundle (metadata lists it)", bundle_dir)
    digests = {name: _check_bytes(data, entry.size_bytes, entry.sha256, path, "")}
    members = {}
    for member in entry.files.values():
        member_file = member_path(bundle_dir, member.name)
        members[member.name] = _read_listed(bundle_dir, member.name,
                                            f"missing: {entry.file} needs it ({METADATA_FILE} lists it)", member_file)
        digests[member.name] = _check_bytes(members[member.name], member.size_bytes, member.sha256, member_file,
                                            f" for {entry.file}'s data")
    return ModelFiles(path, data, members, digests)


def _read_listed(bundle_dir: Path, name: str, missing: str, where: Path) -> bytes:
    try:
        return read_confined(bundle_dir, name, MAX_MODEL_BYTES)
    except FileNotFoundError as err:
        raise (ModelError if where == Path(bundle_dir) else BundleIntegrityError)(missing, where) from err
    except OSError as err:
        raise ModelError(f"cannot read it ({first_line(err)})", Path(bundle_dir) / name) from err


def _check_bytes(data: bytes, size: int, sha256: str, path: Path, whose: str) -> str:
    """The sha256 of `data`, after checking it and its length against the recorded ones (a one-line
    BundleIntegrityError naming `path` when they differ)."""
    import hashlib

    if size and len(data) != size:
        raise BundleIntegrityError(f"is {len(data)} bytes but {METADATA_FILE} records {size}{whose} (truncated or "
                                   f"replaced?); refusing to run it", path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BundleIntegrityError(f"sha256 {digest[:12]}… differs from the {sha256[:12]}… in {METADATA_FILE}"
                                   f"{whose} (tampered or damaged); refusing to run it", path)
    return digest


def check_external_locations(bundle_dir: Path, entry: ModelEntry, locations: list[str]) -> None:
    """Every external data location a model names must be a file its entry lists (so hashed): onnxruntime
    opens whatever a location names, relative to the model's folder. Anything else is refused before it is read,
    as a one-line BundleIntegrityError naming the model and the location."""
    for location in locations:
        if location not in entry.files:
            raise BundleIntegrityError(f"its external data {location[:120]!r} is not listed in "
                                       f"{METADATA_FILE} with a sha256 (models.{entry.file}.files); refusing to run "
                                       f"it", Path(bundle_dir) / entry.file)


def check_binding(metadata: BundleMetadata, props: dict[str, str], path: Path) -> None:
    """Refuse a bundle whose metadata.json says something about a model file that the file itself contradicts.

    Export stamps every .onnx with the bundle's classes, preprocessing and output roles (its metadata_props);
    metadata.json is a separate, unhashed file, so reversing its `classes` relabelled every scan while the
    checked model ran unchanged. Each field the file carries is compared; a file that carries none (LiteRT
    files, foreign models) has nothing to contradict. Raises a one-line ModelError naming the file and field."""
    if ONNX_META_KEY in props:
        try:
            carried = BundleMetadata.from_dict(loads_strict(props[ONNX_META_KEY]), path)
        except (ValueError, RecursionError, ConfigError) as err:  # JSONDecodeError is a ValueError
            raise ModelError(f"the tumor-edge metadata it carries is invalid ({first_line(err)})", path) from err
        if carried.classes != metadata.classes:
            _unbound(path, "classes", metadata.classes, carried.classes)
        if carried.preprocessing != metadata.preprocessing:
            for key, ours in metadata.preprocessing.to_dict().items():
                theirs = carried.preprocessing.to_dict()[key]
                if ours != theirs and key != "description":
                    _unbound(path, f"preprocessing.{key}", ours, theirs)
        if carried.output != metadata.output:
            _unbound(path, "output", metadata.output, carried.output)
        if carried.extra_outputs:  # files exported before roles were stamped carry the scores only
            ours_roles = {r: (o.index, o.type) for r, o in metadata.extra_outputs.items()}
            theirs_roles = {r: (o.index, o.type) for r, o in carried.extra_outputs.items()}
            if ours_roles != theirs_roles:
                _unbound(path, "outputs", ours_roles, theirs_roles)
    for key, ours in (("classes", ",".join(metadata.classes)), ("output", metadata.output)):
        if key in props and props[key] != ours:
            _unbound(path, key, ours, props[key])


def _unbound(path: Path, field_name: str, ours: Any, theirs: Any) -> None:
    def show(value: Any) -> str:
        text = repr(value)  # repr escapes what does not print
        return text if len(text) <= 120 else text[:117] + "..."

    raise ModelError(f"{METADATA_FILE} gives {field_name} {show(ours)} but the model file carries {show(theirs)} "
                     f"(metadata edited, or from another model); refusing to run it", path)


# ---------------------------------------------------------------------------------------------- file facts


def sha256_file(path: Path) -> str:
    # hashlib loads OpenSSL, which costs resident memory: imported where a hash is needed, not on every import.
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def companion_files(name: str) -> tuple[str, ...]:
    """The files the engine of a model file reads beside it ("m.xml" -> ("m.bin",) for an .xml + .bin engine):
    every one must be listed, with its sha256, in the model's entry."""
    engine = engine_for_suffix(Path(name).suffix)
    return ENGINES[engine].companions(name) if engine else ()


def describe_file(path: Path, fmt: str, precision: str, files: tuple[str, ...] = (), **extra: Any) -> ModelEntry:
    """The `models` entry of the file at `path`, hashed; `files` names the other files (in its folder) it reads,
    besides its engine's companion files, which are always listed."""
    path = Path(path)
    members: dict[str, MemberFile] = {}
    for name in dict.fromkeys((*companion_files(path.name), *files)):
        member = path.parent / name
        members[name] = MemberFile(member.name, member.stat().st_size, sha256_file(member))
    return ModelEntry(path.name, fmt, precision, path.stat().st_size, sha256_file(path), dict(extra), members)


# ---------------------------------------------------------------------------------------------- the last bundle
# Per user and per machine ($XDG_STATE_HOME/tumor-edge/last_bundle): on a separate device there is none, and the
# runtime says how to name a bundle instead.

MODEL_ENV = "TUMOR_EDGE_MODEL"


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tumor-edge"


def remember_last_bundle(bundle_dir: Path) -> None:
    home = state_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "last_bundle").write_text(str(Path(bundle_dir).resolve()) + "\n")


def resolve_model_path(model: str | Path | None) -> Path:
    """The model argument, else $TUMOR_EDGE_MODEL, else the bundle `export` wrote last on this machine."""
    model = model or os.environ.get(MODEL_ENV)
    if model:
        return Path(model)
    marker = state_home() / "last_bundle"
    if marker.is_file():
        return Path(marker.read_text().strip())
    raise ModelError(f"no model given: name a bundle folder (or a .onnx file), set {MODEL_ENV}, "
                     "or run `tumor-edge export` first")
