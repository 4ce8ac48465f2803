"""A folder holding one DICOM series (one file a slice) as a volume cut into slices: the `dicom series` reader.

A folder is a series when every visible entry is a regular DICOM file, there are two or more, and they share one
SeriesInstanceUID (`volume_dicom.series_role`).
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.runtime.readers.base import FOLDER_FILES, ReadOptions, Scan
from tumor_edge.runtime.readers.registry import is_dicom_file
from tumor_edge.runtime.volume import volume_scan
from tumor_edge.runtime.volume_dicom import folder_dicom_files, read_series, series_role


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
