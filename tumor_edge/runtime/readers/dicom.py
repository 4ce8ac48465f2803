"""A DICOM file (`.dcm`, or no suffix and the DICM marker) as grey frames shown as a viewer would: the `dicom`
reader. The display pipeline itself is `runtime/dicom.py`, imported only when a DICOM file turns up, so a JPEG run
never loads it (nor pydicom, the `dicom` extra).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tumor_edge.runtime.pixels import warn_if_constant
from tumor_edge.runtime.readers.base import IMAGE, Picture, ReadOptions, Scan
from tumor_edge.runtime.special_files import read_head


def has_dicom_magic(path: Path) -> bool:
    """DICOM files may lack a suffix; the 'DICM' magic at byte 128 identifies them (special files: never opened)."""
    return read_head(path, 132)[128:132] == b"DICM"


def read(path: Path, options: ReadOptions) -> Scan:
    """The frames of a DICOM file: the middle one, all, or one index (`options.frames`)."""
    from tumor_edge.runtime.dicom import read_dicom_frames

    pictures = []
    for f in read_dicom_frames(path, options.frames):
        picture = Picture(Image.fromarray(f.pixels).convert("RGB"), f.index, f.count)
        warn_if_constant(picture.image, path, picture.label)
        pictures.append(picture)
    return Scan(str(path), "dicom", IMAGE, pictures, pictures[0].count if pictures else 1)
