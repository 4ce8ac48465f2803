"""Writing the bundle around the converted files: the output folder rule, the metadata each ONNX file carries
inside itself, the `models` entries (size, hash, how each was made, its parity verdict) and `metrics`.

File names come from the format table and `contracts.bundle`; none is spelled here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import BUNDLE_DOCUMENTS, BundleMetadata, ModelEntry, describe_file, member_path
from tumor_edge.contracts.formats import BUNDLE_MODEL_FILES
from tumor_edge.errors import ModelError
from tumor_edge.export.context import ExportedFile
from tumor_edge.outdir import prepare_out_dir as _prepare_out_dir
from tumor_edge.signing import SIGNATURE_FILE


def is_bundle_file(name: str) -> bool:
    """A file export writes (and `force` may replace): a table model file, a bundle document, the signature (a
    new export's files would never match an old signature)."""
    return name in BUNDLE_MODEL_FILES or name in BUNDLE_DOCUMENTS or name == SIGNATURE_FILE


def prepare_out_dir(out: Path, force: bool) -> Path:
    """Refuse a non-empty folder without force; with it, remove only the files a bundle consists of."""
    return _prepare_out_dir(out, force, is_bundle_file, "bundle")


def stamp_onnx_files(out: Path, rows: Sequence[ExportedFile], metadata: BundleMetadata) -> None:
    """Every ONNX file carries the bundle's essentials in its metadata_props, so it classifies on its own."""
    from tumor_edge.export.onnx_export import onnx_metadata, stamp_onnx

    doc = (f"tumor-edge {metadata.name}: classes {', '.join(metadata.classes)}; "
           f"{metadata.preprocessing.to_dict()['description']}. {metadata.intended_use}")
    for row in rows:
        if row.ok and row.engine == "onnxruntime":
            stamp_onnx(out / row.file, onnx_metadata(metadata, row.file, row.precision), doc)


def model_entries(out: Path, rows: Sequence[ExportedFile], verdicts: dict[str, str] | None) -> dict[str, ModelEntry]:
    """metadata.json's `models`: each file written, hashed, with every external data file it reads (hashed too:
    the runtime refuses a model naming data its entry does not list), the converter's facts and its verdict."""
    entries = {}
    for row in rows:
        if not row.ok:
            continue
        extra = {k: v for k, v in row.extra.items() if not k.startswith("_")}
        extra["parity"] = (verdicts or {}).get(row.file, "not checked")
        files = tuple(external_files(out, row.file)) if row.engine == "onnxruntime" else ()
        entries[row.file] = describe_file(out / row.file, row.format, row.precision, files=files, **extra)
    return entries


def external_files(out: Path, file: str) -> list[str]:
    """The external data files the ONNX model `file` in `out` reads. Each must be a plain name in the bundle
    folder, the only place the runtime accepts one from; anything else is an error here, not a bundle that
    no device will run."""
    from tumor_edge.runtime import external_data_locations

    names = external_data_locations(out / file)
    for name in names:
        member_path(out, name)  # a plain name, inside the folder (BundleIntegrityError otherwise)
        if not (out / name).is_file():
            raise ModelError(f"its external data {name!r} was not written beside it", out / file)
    return names


def private_reports(rows: Sequence[ExportedFile]) -> dict[str, Any]:
    """The bulky facts converters return under "_" keys (the int8 calibration comparison), for `metrics`."""
    reports = {}
    for row in rows:
        for key, value in row.extra.items():
            if key.startswith("_") and row.ok:
                reports[f"{row.key.replace('-', '_')}{key.replace('_report', '_calibration')}"] = value
    return reports


__all__ = ["external_files", "is_bundle_file", "model_entries", "prepare_out_dir", "private_reports",
           "stamp_onnx_files"]
