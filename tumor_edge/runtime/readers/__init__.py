"""Input types as readers: one `Reader` record per type, one registry (`registry.py`), the only place suffixes
live. `read_scan(path)` reads anything a reader claims; a new type is a row in `registry.READERS`.
"""

from __future__ import annotations

from tumor_edge.runtime.readers.base import IMAGE, VOLUME, Picture, Reader, ReadOptions, Scan
from tumor_edge.runtime.readers.registry import (
    claimed_suffix,
    is_dicom_file,
    is_scan_file,
    is_volume,
    read_scan,
    reader_by_suffix,
    reader_for,
    readers,
    readers_help,
    scan_suffixes,
)

__all__ = ["IMAGE", "VOLUME", "Picture", "ReadOptions", "Reader", "Scan", "claimed_suffix", "is_dicom_file",
           "is_scan_file", "is_volume", "read_scan", "reader_by_suffix", "reader_for", "readers", "readers_help",
           "scan_suffixes"]
