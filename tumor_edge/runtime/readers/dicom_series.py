"""The `dicom series` reader: a folder holding one DICOM series (one file a slice) as a volume cut into slices
(pydicom, the `dicom` extra).

A folder is a series when every visible file directly in it is a single-frame DICOM image and all share one
SeriesInstanceUID (two files at least); a folder where several files share a series but not all of them (two
series, or a series and a stray localizer) is refused: one series a folder. Headers are read first (no pixels)
and the stack checked against the cap before the slices are read one file at a time, ordered along the slice
normal; the modality LUT and MONOCHROME1's inversion are the single-file rules (`readers/dicom.py`).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.errors import InputImageError
from tumor_edge.runtime.readers import is_dicom_file
from tumor_edge.runtime.readers.base import (
    FOLDER_FILES,
    FOLDER_REFUSED,
    FOLDER_SCAN,
    ReadOptions,
    Scan,
    check_volume_size,
)
from tumor_edge.runtime.volume import Volume, closest_ras, ras_spacing, to_ras, volume_scan

MAX_LISTED_SERIES = 4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SliceHeader:
    """What one file's header says about its place in a series."""

    path: Path
    series: str | None  # SeriesInstanceUID
    label: str  # SeriesNumber and SeriesDescription, for messages
    rows: int
    columns: int
    bytes_per_sample: int
    samples: int
    frames: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row cosine, column cosine (LPS)
    position: tuple[float, float, float] | None  # ImagePositionPatient (LPS, mm)
    pixel_spacing: tuple[float, float] | None  # between rows, between columns (mm)
    thickness: float | None
    instance: int | None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == count and all(np.isfinite(out)) else None


def _int(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def header(path: Path) -> SliceHeader:
    from tumor_edge.runtime.readers.dicom import read_dataset

    ds = read_dataset(path, pixels=False)  # sizes, positions, UIDs: no pixel data yet
    rows, columns = _int(getattr(ds, "Rows", None), 0), _int(getattr(ds, "Columns", None), 0)
    number = getattr(ds, "SeriesNumber", None)
    description = str(getattr(ds, "SeriesDescription", "") or "").strip()[:40]
    uid = getattr(ds, "SeriesInstanceUID", None)
    label = " ".join(part for part in (f"series {number}" if number not in (None, "") else "",
                                       repr(description) if description else "") if part) or f"series {uid}"
    thickness = _floats([getattr(ds, "SliceThickness", None)], 1)
    return SliceHeader(path, str(uid) if uid else None, label, rows or 0, columns or 0,
                       max(1, -(-(_int(getattr(ds, "BitsAllocated", 16), 16) or 16) // 8)),
                       _int(getattr(ds, "SamplesPerPixel", 1), 1) or 1, _int(getattr(ds, "NumberOfFrames", 1), 1) or 1,
                       _floats(getattr(ds, "ImageOrientationPatient", None), 6),
                       _floats(getattr(ds, "ImagePositionPatient", None), 3),
                       _floats(getattr(ds, "PixelSpacing", None), 2),
                       thickness[0] if thickness else None, _int(getattr(ds, "InstanceNumber", None), None))


def folder_dicom_files(folder: Path) -> tuple[list[Path], bool]:
    """(the visible regular files directly in `folder`, sorted; whether it holds anything else: a subfolder, a
    special file). Hidden names are skipped."""
    files, other = [], False
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                other = True
                continue
            if stat.S_ISREG(mode):
                files.append(Path(entry.path))
            else:
                other = True
    return files, other


def series_role(folder: Path, files: list[Path]) -> tuple[str, str | None]:
    """What a folder of `files` (two or more, all DICOM, no subfolders) is: FOLDER_SCAN (one series),
    FOLDER_FILES (separate images) or FOLDER_REFUSED with the one-line reason. Reads headers only; without
    pydicom it is a folder of images (each then says which extra it needs)."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return FOLDER_FILES, None
    headers = []
    for path in files:
        try:
            headers.append(header(path))
        except Exception:  # an unreadable file: reading the series (or the image) names it
            continue
    if any(h.frames > 1 for h in headers):
        return FOLDER_FILES, None  # multi-frame files are volumes of their own (`--frames`)
    groups = Counter(h.series or f"no SeriesInstanceUID: {h.path.name}" for h in headers)  # never a series
    multi = {uid: n for uid, n in groups.items() if n >= 2 and not uid.startswith("no SeriesInstanceUID")}
    if not multi:
        return FOLDER_FILES, None
    if len(groups) == 1:
        return FOLDER_SCAN, None  # with unreadable files among it, reading the series names them
    labels = {h.series or f"no SeriesInstanceUID: {h.path.name}": h.label for h in headers}
    listed = [f"{labels[uid]} ({n} file{'s' if n != 1 else ''})" for uid, n in groups.most_common()]
    more = f", and {len(listed) - MAX_LISTED_SERIES} more" if len(listed) > MAX_LISTED_SERIES else ""
    return FOLDER_REFUSED, (f"holds {len(groups)} DICOM series ({'; '.join(listed[:MAX_LISTED_SERIES])}{more}); "
                            "a series folder must hold one: put each series in its own folder")


def _stack_geometry(headers: list[SliceHeader], folder: Path, notes: list[str]
                    ) -> tuple[list[SliceHeader], np.ndarray, tuple[float, float, float]]:
    """Slices in order along their normal, the voxel-to-patient direction matrix (RAS, unit columns) of the
    array (slice, row, column), and its voxel sizes."""
    first = headers[0]
    oriented = all(h.orientation is not None and h.position is not None for h in headers)
    if oriented:
        if any(not np.allclose(h.orientation, first.orientation, atol=1e-3) for h in headers):
            raise InputImageError("DICOM series files have different orientations (not one stack of slices)",
                                  folder)
        row_cos, col_cos = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
        normal = np.cross(row_cos, col_cos)
        if np.linalg.norm(normal) < 0.5:
            raise InputImageError("DICOM ImageOrientationPatient is not two perpendicular directions", folder)
        distance = {h.path: float(np.dot(h.position, normal)) for h in headers}
        headers = sorted(headers, key=lambda h: distance[h.path])
        gaps = np.diff([distance[h.path] for h in headers])
        if np.any(np.abs(gaps) < 1e-3):
            raise InputImageError("DICOM series has two slices at the same position (duplicate files, or "
                                  "several acquisitions in one series)", folder)
        step = float(np.median(gaps))
        if gaps.max() > 1.5 * gaps.min():
            notes.append(f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm); {step:.3g} mm assumed")
    else:
        notes.append("no ImageOrientationPatient/ImagePositionPatient in the files: slices taken as axial, in "
                     "InstanceNumber order")
        row_cos, col_cos, normal = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
        headers = sorted(headers, key=lambda h: (h.instance is None, h.instance or 0, h.path.name))
        step = first.thickness if first.thickness and first.thickness > 0 else 1.0
    spacing = first.pixel_spacing if first.pixel_spacing and min(first.pixel_spacing) > 0 else None
    if spacing is None:
        notes.append("no PixelSpacing in the files; 1 mm assumed")
        spacing = (1.0, 1.0)
    direction = LPS_TO_RAS @ np.stack([normal, col_cos, row_cos], axis=1)
    return headers, direction, (abs(step), spacing[0], spacing[1])


def read_series(folder: str | Path, files: list[Path]) -> Volume:
    """A DICOM series folder as a `Volume` from its DICOM `files` (the registry's `dicom series` reader picks them:
    the suffixes live there); one-line errors for a folder that is not one readable stack."""
    from tumor_edge.runtime.readers.dicom import is_monochrome1, modality_scaling, pixel_array, read_dataset

    folder = Path(folder)
    if len(files) < 2:
        raise InputImageError("a DICOM series folder needs at least two slice files", folder)
    headers = [header(path) for path in files]  # an unreadable file: its own one-line error
    if len({h.series for h in headers}) > 1:  # the folder changed since `series_role` called it one series
        raise InputImageError("files of several DICOM series in one folder", folder)
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) > 1:
        listed = ", ".join(f"{c}x{r} ({n} files)" for (r, c), n in sizes.most_common(4))
        raise InputImageError(f"DICOM series files have different image sizes ({listed}): not one stack", folder)
    if any(h.samples != 1 for h in headers):
        raise InputImageError("DICOM series of colour images: classify volumes of grey MR slices", folder)
    first = headers[0]
    check_volume_size((len(headers), first.rows, first.columns), max(h.bytes_per_sample for h in headers), folder)
    notes: list[str] = []
    headers, direction, spacing = _stack_geometry(headers, folder, notes)
    stored = slope = intercept = None
    invert = False
    for k, h in enumerate(headers):
        ds = read_dataset(h.path)
        pixels = pixel_array(ds, h.path)
        if pixels.shape != (first.rows, first.columns):
            raise InputImageError(f"DICOM slice {h.path.name} holds pixels of shape {pixels.shape}, not "
                                  f"{first.rows}x{first.columns} like the rest of its series", folder)
        if stored is None:
            stored = np.empty((len(headers), first.rows, first.columns), dtype=pixels.dtype)
            slope = np.ones((len(headers), 1, 1), dtype=np.float32)
            intercept = np.zeros((len(headers), 1, 1), dtype=np.float32)
            invert = is_monochrome1(ds)
        elif pixels.dtype != stored.dtype:
            raise InputImageError(f"DICOM slice {h.path.name} stores {pixels.dtype} pixels, the rest of its series "
                                  f"{stored.dtype}", folder)
        stored[k] = pixels
        slope[k], intercept[k] = modality_scaling(ds)
        del ds, pixels
    if invert:  # MONOCHROME1: bright must mean high signal, as for single DICOM files
        top = float(max(np.max(stored[k]) * slope[k, 0, 0] + intercept[k, 0, 0] for k in range(len(stored))))
        slope, intercept = -slope, top - intercept
    order = closest_ras(direction)  # voxel axes (slice, row, column) -> RAS
    shape = (len(headers), first.rows, first.columns)
    return Volume(str(folder), to_ras(stored, order), ras_spacing(spacing, order),
                  to_ras(np.broadcast_to(slope, shape), order), to_ras(np.broadcast_to(intercept, shape), order),
                  notes)


def folder_role(folder: Path) -> tuple[str, str | None]:
    """FOLDER_SCAN when `folder` is one series, FOLDER_REFUSED (and why) when it mixes several multi-file series,
    else FOLDER_FILES (its files are classified one by one)."""
    try:
        files, other = folder_dicom_files(folder)
    except OSError:
        return FOLDER_FILES, None  # walking the folder reports it
    if other or len(files) < 2 or not all(is_dicom_file(f) for f in files):
        return FOLDER_FILES, None
    return series_role(folder, files)


def read(folder: Path, options: ReadOptions) -> Scan:
    """The series' slices along `options.axis` (`options.slices` of them)."""
    files, _ = folder_dicom_files(folder)
    return volume_scan(read_series(folder, [f for f in files if is_dicom_file(f)]), options, "dicom series")
