"""Input types as readers: the one registry of input types, each row a `Reader` (readers/base.py), and the only
place file suffixes are written down; `read_scan(path)` reads anything a reader claims.

Every consumer finds its reader here (the folder walk, decoding, serve's upload check) and every table of input
types is built from the rows (`env`'s extras, classify's help); every function reads READERS when called.
Lookup goes through the rows in order: the first whose suffix or magic matches reads the file (DICOM first: a
DICOM file may have any name). A file nobody claims goes to Pillow, which knows formats by content and otherwise
says in one line that the file is no image. A folder is a scan only when a folder reader says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.errors import InputImageError
from tumor_edge.runtime.readers.base import (
    FOLDER_FILES,
    FOLDER_SCAN,
    IMAGE,
    KINDS,
    VOLUME,
    Picture,
    Reader,
    ReadOptions,
    Scan,
    check_file_size,
    check_frames,
    stat_regular,
)

__all__ = ["IMAGE", "VOLUME", "Picture", "ReadOptions", "Reader", "Scan", "claimed_suffix", "is_dicom_file",
           "is_scan_file", "is_volume", "read_scan", "readers", "readers_help"]

FALLBACK = "image"  # the reader of a file nobody claims: Pillow knows formats by content
_READERS = "tumor_edge.runtime.readers."

# The rows, in lookup order. Each names its module, imported when a file of its type turns up.
READERS: list[Reader] = [
    Reader("dicom", (".dcm", ".dicom"), _READERS + "dicom:read", magic=(128, b"DICM"), extra="dicom",
           modules=("pydicom",), description="DICOM (.dcm or suffix-less)"),
    Reader("image", (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"), _READERS + "pillow:read",
           description="JPEG, PNG (8/16-bit, grey, RGBA, palette), BMP, TIFF, GIF, WebP"),
    Reader("nifti", (".nii", ".nii.gz"), _READERS + "nifti:read", kind=VOLUME, extra="nifti", modules=("nibabel",),
           description="NIfTI (.nii, .nii.gz)"),
    Reader("dicom series", (), _READERS + "dicom:read_series_folder", kind=VOLUME,
           folder=_READERS + "dicom:series_folder_role", extra="dicom", modules=("pydicom",),
           description="a folder that is one DICOM series"),
]


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by suffix or by the DICM marker (special files: never opened)."""
    return _row("dicom").claims(path)


def _row(name: str) -> Reader:
    return next(reader for reader in READERS if reader.name == name)


def readers() -> tuple[Reader, ...]:
    return tuple(READERS)


def readers_help() -> str:
    """The input types, from the rows, for classify's help: "Images: DICOM (.dcm or suffix-less) [`dicom` extra];
    JPEG, ... Volumes: ...: a row per slice, then a volume summary." """
    def entry(reader: Reader) -> str:
        return reader.description + (f" [`{reader.extra}` extra]" if reader.extra else "")

    images = "; ".join(entry(r) for r in READERS if r.kind != VOLUME)
    volumes = "; ".join(entry(r) for r in READERS if r.kind == VOLUME)
    return f"Images: {images}. Volumes: {volumes}: a row per slice, then a volume summary."


def claimed_suffix(name: str | Path) -> str | None:
    """The suffix (longest match, lower-case, e.g. '.nii.gz') by which some reader claims a file `name`."""
    matches = [s for reader in READERS if (s := reader.suffix_of(name)) is not None]
    return max(matches, key=len) if matches else None


def _file_reader(path: Path) -> Reader:
    return next((r for r in READERS if r.claims(path)), _row(FALLBACK))


def folder_role(folder: Path) -> tuple[Reader | None, str, str | None]:
    """(the folder reader, FOLDER_SCAN or FOLDER_REFUSED, why) for the first folder reader with an opinion on
    `folder`; (None, FOLDER_FILES, None) when its files are to be walked."""
    for reader in READERS:
        role, why = reader.folder_role(folder)  # FOLDER_FILES from a reader of files
        if role != FOLDER_FILES:
            return reader, role, why
    return None, FOLDER_FILES, None


def is_scan_file(path: str | Path, kinds: tuple[str, ...] = KINDS) -> bool:
    """Whether a file found while walking a folder is a scan (of a reader of one of `kinds`): not hidden, and
    claimed by suffix or, suffix-less, by content (opened only when it is a regular file, so a FIFO in the folder
    never blocks the walk)."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    rows = [r for r in READERS if r.kind in kinds]
    if any(r.suffix_of(path) is not None for r in rows):
        return True
    return path.suffix == "" and any(r.sniff(path) for r in rows)


def is_volume(path: str | Path) -> bool:
    """Whether `path` is read as a volume (sliced, then summarised): a folder a volume reader claims, or a file
    whose reader (first row whose suffix or magic matches) reads volumes. A file no volume reader could claim (by
    suffix, or by content where one sniffs) is answered without opening it."""
    path = Path(path)
    if os.path.isdir(path):
        reader, role, _ = folder_role(path)
        return reader is not None and role == FOLDER_SCAN and reader.kind == VOLUME
    return (any(r.suffix_of(path) is not None or r.magic is not None for r in READERS if r.kind == VOLUME)
            and _file_reader(path).kind == VOLUME)


def read_scan(path: str | Path, options: ReadOptions | None = None) -> Scan:
    """Read any scan a reader claims: a file (regular, not empty, within the file-size cap) or a folder reader's
    folder. Errors are one-line InputImageErrors naming the path (ConfigError for bad options)."""
    options = options or ReadOptions()
    check_frames(options.frames)
    path = Path(path)
    if os.path.isdir(path):
        reader, role, why = folder_role(path)
        if role == FOLDER_SCAN and reader is not None:
            return reader.load(path, options)
        raise InputImageError(why or "is a folder that no reader reads as one scan (list its files instead)", path)
    info = stat_regular(path)
    if info.st_size == 0:
        raise InputImageError("empty file (0 bytes)", path)
    check_file_size(info.st_size, path)
    return _file_reader(path).load(path, options)
