"""Input types as readers: one `Reader` row per type in `registry.READERS`, the only place suffixes live;
`read_scan(path)` reads anything a reader claims."""

from __future__ import annotations

from tumor_edge.runtime.readers.base import IMAGE, VOLUME, Picture, Reader, ReadOptions, Scan
from tumor_edge.runtime.readers.registry import (
    claimed_suffix,
    is_dicom_file,
    is_scan_file,
    is_volume,
    read_scan,
    readers,
    readers_help,
)

__all__ = ["IMAGE", "VOLUME", "Picture", "ReadOptions", "Reader", "Scan", "claimed_suffix", "is_dicom_file",
           "is_scan_file", "is_volume", "read_scan", "readers", "readers_help"]
