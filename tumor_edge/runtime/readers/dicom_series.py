"""A folder holding one DICOM series (one file a slice) as a volume cut into slices: the `dicom series` reader.

Whether a folder is a series is decided from its entries (every visible entry a regular DICOM file, two or more
of them, one SeriesInstanceUID: `volume_dicom.series_role`); reading it is `runtime/volume_dicom.py`, slicing
`runtime/volume.py`. `is_dicom` is the registry's test for one DICOM file, passed in so that this module needs no
suffix of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tumor_edge.runtime.readers.base import FOLDER_FILES, FOLDER_REFUSED, FOLDER_SCAN, ReadOptions, Scan


def folder_role(folder: Path, is_dicom: Callable[[Path], bool]) -> tuple[str, str | None]:
    """FOLDER_SCAN when `folder` is one series, FOLDER_REFUSED (and why) when it mixes several multi-file series,
    else FOLDER_FILES (its files are classified one by one)."""
    from tumor_edge.runtime.volume_dicom import folder_dicom_files, series_role

    try:
        files, other = folder_dicom_files(folder)
    except OSError:
        return FOLDER_FILES, None  # walking the folder reports it
    if other or len(files) < 2 or not all(is_dicom(f) for f in files):
        return FOLDER_FILES, None
    role, why = series_role(folder, files)
    return {"series": FOLDER_SCAN, "refused": FOLDER_REFUSED}.get(role, FOLDER_FILES), why


def read(folder: Path, options: ReadOptions, is_dicom: Callable[[Path], bool]) -> Scan:
    """The series' slices along `options.axis` (`options.slices` of them)."""
    from tumor_edge.runtime.volume import volume_scan
    from tumor_edge.runtime.volume_dicom import folder_dicom_files, read_series

    files, _ = folder_dicom_files(folder)
    return volume_scan(read_series(folder, [f for f in files if is_dicom(f)]), options, "dicom series")
