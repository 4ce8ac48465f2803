"""Which bundle files the server may read: plain files inside the bundle folder, never through a symbolic link
(a MODEL_CARD.md linked to ~/.ssh/id_rsa would otherwise be served at /v1/model). The folder itself may be a link.
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata
from tumor_edge.errors import BundleIntegrityError


def confined_file(folder: Path, name: str) -> Path:
    """The path of bundle file `name` once shown to be a plain file inside `folder` (a missing one is returned as
    is, for its reader to report), else a BundleIntegrityError."""
    root = Path(folder).resolve()
    path = root / name
    if path.is_symlink():
        raise BundleIntegrityError(f"{name} is a symbolic link; a bundle's files must be plain files inside it "
                                   f"(refusing to read it)", root)
    if path.exists():
        if path.resolve().parent != root:
            raise BundleIntegrityError(f"{name} resolves outside the bundle folder (refusing to read it)", root)
        if not path.is_file():
            raise BundleIntegrityError(f"{name} is not a regular file", root)
    return path


def bundle_of(model_path: Path) -> Path | None:
    """The bundle folder of a model path (the folder itself, or the folder holding the file's metadata)."""
    if model_path.is_dir():
        return model_path
    return model_path.parent if (model_path.parent / METADATA_FILE).exists() else None


def check_bundle_files(model_path: Path, model_file: str | None) -> None:
    """Before anything is loaded: metadata.json and the model file to run are plain files inside the bundle."""
    folder = bundle_of(model_path)
    if folder is None:
        return  # a lone model file: the user's own file, no bundle to confine it to
    confined_file(folder, METADATA_FILE)
    in_folder = model_path.is_dir()
    confined_file(folder, (model_file or BundleMetadata.read(folder).default_model()) if in_folder else model_path.name)
