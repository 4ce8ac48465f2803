"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Export writes it; the runtime, bench, verify and serve read it. This module is the single definition of its
files and its metadata schema (field names follow MONAI's bundle metadata where they fit). Reading validates
the schema field by field, so hostile or damaged metadata becomes one line naming the field, never a traceback
or a silently wrong label.

Schema versions: 1 (tumor-edge 0.1) and 2 (0.2: adds `outputs`, the role of each model output, and
`reference`, the outputs every model gave on a small generated input set, which `tumor-edge verify` reproduces on
a device). A version-1 bundle reads as a version-2 bundle whose only output is the class scores. Within version
2, a model entry may list `files` (name -> size and sha256 of each external data file the model reads): optional
and ignored by readers that predate it, so the version stays 2 (the schema has no minor version).

Integrity: no file of a bundle is read unless metadata.json lists it with its sha256 (models, their external
data), no listed file may resolve outside the bundle folder (metadata.json included), and what a model file
carries about itself must agree with metadata.json (`check_binding`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.formats import DEFAULT_MODEL_PREFERENCE, ENGINES, engine_for_suffix
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

    def identity(self) -> str:
        """What the model's behaviour depends on, as one hex digest: its sha256, or with external data files a
        sha256 over it and theirs (the device cache keys optimised copies by this, so new weights under an
        unchanged model file never load a stale entry)."""
        if not self.files:
            return self.sha256
        import hashlib

        text = json.dumps([self.sha256, sorted((n, m.sha256) for n, m in self.files.items())])
        return hashlib.sha256(text.encode()).hexdigest()


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
        from tumor_edge.contracts.bundle_schema import parse_metadata

        try:
            return parse_metadata(data)
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
        """Read and validate a bundle's metadata.json: confined to the folder like every member (a link to a file
        elsewhere is refused), with duplicate keys refused (JSON would silently keep the last `classes`)."""
        path = Path(bundle_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelError(f"not a tumor-edge bundle: no {METADATA_FILE}", bundle_dir)
        member_path(bundle_dir, METADATA_FILE)
        try:
            if path.stat().st_size > MAX_METADATA_BYTES:
                raise ModelError(f"metadata is larger than {MAX_METADATA_BYTES >> 20} MB", path)
            data = loads_strict(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"unreadable metadata ({first_line(err)})", path) from err
        except ConfigError as err:
            raise ModelError(f"invalid tumor-edge metadata: {printable(err.reason)}", path) from err
        return cls.from_dict(data, path)

    def default_model(self) -> str:
        for name in DEFAULT_MODEL_PREFERENCE:
            if name in self.models:
                return name
        plain = [name for name in self.models if not is_optimized_name(name)]
        if not plain:
            raise ModelError("bundle lists no models")
        return plain[0]


def loads_strict(text: str) -> Any:
    """json.loads, refusing an object that names a key twice (a ConfigError naming the key): metadata whose
    meaning depends on which of two `classes` lists a parser keeps is not metadata."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                raise ConfigError(f"duplicate key {printable(key)[:80]!r} in a JSON object")
            obj[key] = value
        return obj

    return json.loads(text, object_pairs_hook=pairs)


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
    for companion in companion_files(name):
        if companion not in entry.files:
            raise BundleIntegrityError(f"{companion} (its engine reads it beside this file) is not listed with it "
                                       f"in {METADATA_FILE}, so its integrity cannot be checked; refusing to run it",
                                       path)
    size = path.stat().st_size
    if entry.size_bytes and size != entry.size_bytes:
        raise BundleIntegrityError(f"is {size} bytes but {METADATA_FILE} records {entry.size_bytes} (truncated or "
                                   f"replaced?); refusing to run it", path)
    if check_hash:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleIntegrityError(f"sha256 {digest[:12]}… differs from the {entry.sha256[:12]}… in "
                                       f"{METADATA_FILE} (tampered or damaged); refusing to run it", path)
    check_member_files(bundle_dir, entry, check_hash)
    return path, entry.sha256


def check_member_files(bundle_dir: Path, entry: ModelEntry, check_hash: bool = True) -> None:
    """Each file a model entry lists besides the model (its external data): confined to the bundle folder,
    present, of the recorded size and (unless `check_hash` is off) the recorded sha256; else a one-line
    BundleIntegrityError naming that file."""
    for name, member in entry.files.items():
        path = member_path(bundle_dir, name)
        if not path.is_file():
            raise BundleIntegrityError(f"missing: {entry.file} needs it ({METADATA_FILE} lists it)", path)
        size = path.stat().st_size
        if size != member.size_bytes:
            raise BundleIntegrityError(f"is {size} bytes but {METADATA_FILE} records {member.size_bytes} for "
                                       f"{entry.file}'s data (truncated or replaced?); refusing to run it", path)
        if check_hash:
            digest = sha256_file(path)
            if digest != member.sha256:
                raise BundleIntegrityError(f"sha256 {digest[:12]}… differs from the {member.sha256[:12]}… in "
                                           f"{METADATA_FILE} for {entry.file}'s data (tampered or damaged); "
                                           f"refusing to run it", path)


def check_external_locations(bundle_dir: Path, entry: ModelEntry, locations: list[str]) -> None:
    """Every external data location a model names must be a file its entry lists (so hashed): onnxruntime
    opens whatever a location names, relative to the model's folder. Anything else is refused before it is read,
    as a one-line BundleIntegrityError naming the model and the location."""
    for location in locations:
        if location not in entry.files:
            raise BundleIntegrityError(f"its external data {printable(location)[:120]!r} is not listed in "
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
    if "classes" in props and props["classes"] != ",".join(metadata.classes):
        _unbound(path, "classes", ",".join(metadata.classes), props["classes"])
    if "output" in props and props["output"] != metadata.output:
        _unbound(path, "output", metadata.output, props["output"])


def _unbound(path: Path, field_name: str, ours: Any, theirs: Any) -> None:
    def show(value: Any) -> str:
        text = printable(repr(value))
        return text if len(text) <= 120 else text[:117] + "..."

    raise ModelError(f"{METADATA_FILE} gives {field_name} {show(ours)} but the model file carries {show(theirs)} "
                     f"(metadata edited, or from another model); refusing to run it", path)


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


def companion_files(name: str) -> tuple[str, ...]:
    """The files the engine of a model file reads beside it ("m.xml" -> ("m.bin",) for an .xml + .bin engine):
    every one must be listed, with its sha256, in the model's entry."""
    engine = engine_for_suffix(Path(name).suffix)
    return ENGINES[engine].companions(name) if engine else ()


def describe_file(path: Path, fmt: str, precision: str, files: tuple[str, ...] = (), **extra: Any) -> ModelEntry:
    """The `models` entry of the file at `path`, hashed; `files` names the other files (in its folder) it reads,
    besides its engine's companion files, which are always listed."""
    path = Path(path)
    names = dict.fromkeys((*companion_files(path.name), *files))
    members = {name: describe_member(path.parent / name) for name in names}
    return ModelEntry(path.name, fmt, precision, path.stat().st_size, sha256_file(path), dict(extra), members)


def describe_member(path: Path) -> MemberFile:
    path = Path(path)
    return MemberFile(path.name, path.stat().st_size, sha256_file(path))
