"""Decoding 2-D scans into 8-bit RGB frames: the one code path training, parity and the device all use.

Every consumer (the training pipeline, export parity, `classify`, `bench`) turns a file into pixels here, so a
difference in decoding or resizing between training and the device cannot arise. The decoding itself is the
readers' (`runtime/readers/`: Pillow formats, DICOM), found through their registry, which checks the caps and
refuses special files; the pixel conversions are `runtime/pixels.py`. Volumes (NIfTI, DICOM series) are read by the
same registry but are not 2-D images: `load_rgb_frames` refuses them in one line (`classify` and
`Classifier.classify` slice them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from tumor_edge.errors import InputImageError
from tumor_edge.runtime.pixels import to_uint8
from tumor_edge.runtime.readers.base import IMAGE, Picture, ReadOptions
from tumor_edge.runtime.readers.registry import is_dicom_file, read_scan, readers
from tumor_edge.runtime.readers.registry import is_scan_file as _is_scan

__all__ = ["is_dicom_file", "is_scan_file", "load_rgb", "load_rgb_frames", "to_uint8"]


def is_scan_file(path: Path) -> bool:
    """Whether a file found while walking a folder is a 2-D scan (training data, bench and export samples are
    2-D images; `inputs.scan_inputs` also lists volumes)."""
    return _is_scan(path, kinds=(IMAGE,))


def __getattr__(name: str) -> Any:
    """SCAN_SUFFIXES: the suffixes of the 2-D readers, from the registry as it is now (never a snapshot)."""
    if name == "SCAN_SUFFIXES":
        return frozenset(s for reader in readers() if reader.kind == IMAGE for s in reader.suffixes)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_rgb_frames(path: str | Path, frames: str | int = "middle") -> list[Picture]:
    """The frames of a 2-D scan file to classify: one for ordinary images; the middle or all frames of a
    multi-frame DICOM file, a multi-page TIFF or an animated GIF (the same choice for every multi-frame kind)."""
    path = Path(path)
    scan = read_scan(path, ReadOptions(frames=frames))
    if scan.kind != IMAGE:
        scan.close()
        raise InputImageError(f"is a volume ({scan.reader}), not a 2-D image: classify it with `tumor-edge "
                              "classify` or Classifier.classify, which cut it into slices", path)
    return list(scan.pictures)


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded scan as an 8-bit RGB Pillow image at its own size (the middle frame of a multi-frame file,
    the one `classify` takes by default)."""
    return load_rgb_frames(path, "middle")[0].image
