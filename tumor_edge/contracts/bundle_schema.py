"""The bundle metadata's schema checks: field by field, so hostile or damaged metadata becomes one line naming
the field (a ConfigError that `BundleMetadata.from_dict` turns into a ModelError), never a traceback or a silently
wrong label. Kept apart from `bundle.py`, which names the bundle's files and types, so each reads in one sitting.
"""

from __future__ import annotations

from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import (
    MAX_CLASSES,
    MAX_MEMBER_FILES,
    MAX_MODEL_BYTES,
    MAX_OUTPUT_INDEX,
    MAX_REFERENCE_IMAGES,
    MAX_REFERENCE_VALUES,
    METADATA_FILE,
    OUTPUT_TYPES,
    PRECISIONS,
    READABLE_SCHEMA_VERSIONS,
    BundleMetadata,
    MemberFile,
    ModelEntry,
    OutputSpec,
    ReferenceSet,
    _is_hex,
    check_member_name,
)
from tumor_edge.contracts.formats import format_names, format_suffixes
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import BundleIntegrityError, ConfigError, first_line


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
    if not isinstance(digest, str) or digest and (len(digest) != 64 or not _is_hex(digest)):
        raise ConfigError(f"field '{where}sha256' must be 64 hexadecimal digits")
    entry.pop("format"), entry.pop("precision")
    for key in ("ort_optimized_from",):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"field '{where}{key}' must be a string")
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
        try:
            check_member_name(name)
        except BundleIntegrityError as err:
            raise ConfigError(f"field '{where}': {err.reason}") from err
        if name in (model, METADATA_FILE):
            raise ConfigError(f"field '{where}' names {name!r}, which is not a data file of the model")
        size = spec.get("size_bytes") if isinstance(spec, dict) else None
        digest = spec.get("sha256") if isinstance(spec, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MODEL_BYTES:
            raise ConfigError(f"field '{where}.{name}.size_bytes' must be a whole number of bytes up to "
                              f"{MAX_MODEL_BYTES}")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise ConfigError(f"field '{where}.{name}.sha256' must be 64 hexadecimal digits")
        files[name] = MemberFile(name, size, digest.lower())
    return files


