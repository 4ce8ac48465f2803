"""A DICOM file (`.dcm`, or no suffix and the DICM marker) as grey frames shown as a viewer would: the `dicom`
reader. The display pipeline is `runtime/dicom.py` (and pydicom, the `dicom` extra), loaded with this module.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tumor_edge.runtime.dicom import read_dicom_frames
from tumor_edge.runtime.readers.base import IMAGE, Picture, ReadOptions, Scan


def read(path: Path, options: ReadOptions) -> Scan:
    """The frames of a DICOM file: the middle one, all, or one index (`options.frames`)."""
    pictures = [Picture(Image.fromarray(f.pixels).convert("RGB"), f.index, f.count)
                for f in read_dicom_frames(path, options.frames)]
    return Scan(str(path), "dicom", IMAGE, pictures, pictures[0].count if pictures else 1)
