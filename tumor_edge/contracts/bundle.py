"""The model bundle: a folder of exported models plus metadata.json, the runtime's only input.

Export writes it; the runtime, bench, verify and serve read it. This module names the bundle's files and proves
them against the metadata (`bundle_schema` holds the metadata's types and schema checks; its names are imported
here too, so callers need one module).

Integrity: no file of a bundle is read unless metadata.json lists it with its sha256 (models, their external
data), no listed file may resolve outside the bundle folder (metadata.json included), and what a model file
carries about itself must agree with metadata.json (`check_binding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle_schema import (  # the schema's names, so callers need one module
    MAX_CLASSES,
    MAX_MEMBER_FILES,
    MAX_METADATA_BYTES,
    MAX_MODEL_BYTES,
    MAX_OUTPUT_INDEX,
    MAX_REFERENCE_IMAGES,
    MAX_REFERENCE_VALUES,
    METADATA_FILE,
    OPTIMIZED_SUFFIX,
    OUTPUT_TYPES,
    PRECISIONS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    BundleMetadata,
    MemberFile,
    ModelEntry,
    OutputSpec,
    ReferenceSet,
    Release,
    check_member_name,
    is_optimized_name,
    loads_strict,
    member_path,
    printable,
    read_confined,
)
from tumor_edge.contracts.formats import ENGINES, engine_for_suffix
from tumor_edge.errors import BundleIntegrityError, ConfigError, ModelError, first_line

PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
MODEL_CARD = "MODEL_CARD.md"
RELIABILITY_PNG = "reliability.png"  # parity's reliability diagrams: one row per exported file, before/after scaling
# Files a bundle holds besides its models; `export --force` may replace these and nothing else.
BUNDLE_DOCUMENTS: tuple[str, ...] = (METADATA_FILE, PARITY_JSON, PARITY_MD, MODEL_CARD, RELIABILITY_PNG)

# Key of the metadata_props entry that carries the bundle metadata inside an exported .onnx file, so a lone
# .onnx classifies correctly on its own.
ONNX_META_KEY = "tumor_edge"

__all__ = ["BUNDLE_DOCUMENTS", "MAX_CLASSES", "MAX_MEMBER_FILES", "MAX_METADATA_BYTES", "MAX_MODEL_BYTES",
           "MAX_OUTPUT_INDEX", "MAX_REFERENCE_IMAGES", "MAX_REFERENCE_VALUES", "METADATA_FILE", "MODEL_CARD",
           "ONNX_META_KEY", "OPTIMIZED_SUFFIX", "OUTPUT_TYPES", "PARITY_JSON", "PARITY_MD", "PRECISIONS",
           "READABLE_SCHEMA_VERSIONS", "RELIABILITY_PNG", "SCHEMA_VERSION", "BundleMetadata", "MemberFile",
           "ModelEntry", "ModelFiles", "OutputSpec", "ReferenceSet", "Release",
           "check_binding", "check_external_locations", "check_member_name", "check_model_file", "companion_files",
           "describe_file", "describe_member", "is_optimized_name", "loads_strict", "member_path",
           "optimized_model_name", "printable", "read_confined", "read_model_files", "sha256_file"]


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


def check_model_file(bundle_dir: Path, name: str, metadata: BundleMetadata) -> tuple[Path, str]:
    """(path, sha256) of a model listed in the bundle, after `read_model_files` proved it and its member files
    are the ones the metadata describes."""
    files = read_model_files(bundle_dir, name, metadata)
    return files.path, files.digests[name]


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
    """The name an optimised twin of an .onnx model file has (a bundle listing one is refused)."""
    stem = name[:-len(".onnx")] if name.lower().endswith(".onnx") else name
    return stem + OPTIMIZED_SUFFIX


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
    names = dict.fromkeys((*companion_files(path.name), *files))
    members = {name: describe_member(path.parent / name) for name in names}
    return ModelEntry(path.name, fmt, precision, path.stat().st_size, sha256_file(path), dict(extra), members)


def describe_member(path: Path) -> MemberFile:
    path = Path(path)
    return MemberFile(path.name, path.stat().st_size, sha256_file(path))
