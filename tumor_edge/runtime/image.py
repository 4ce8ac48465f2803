"""Decoding 2-D scans into 8-bit RGB frames: the one code path training, parity and the device all use, so
decoding cannot differ between training and the device. The readers' registry decodes; volumes are refused here
(`classify` and `Classifier.classify` slice them).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tumor_edge.errors import InputImageError
from tumor_edge.runtime.readers.base import IMAGE, Picture, ReadOptions
from tumor_edge.runtime.readers.registry import is_scan_file as _is_scan
from tumor_edge.runtime.readers.registry import read_scan

__all__ = ["is_scan_file", "load_rgb", "load_rgb_frames"]


def is_scan_file(path: Path) -> bool:
    """Whether a file found while walking a folder is a 2-D scan (training data, bench and export samples are
    2-D images; `inputs.scan_inputs` also lists volumes)."""
    return _is_scan(path, kinds=(IMAGE,))


def load_rgb_frames(path: str | Path, frames: str | int = "middle") -> list[Picture]:
    """The frames of a 2-D scan file to classify: one for ordinary images; the middle, all or one index of a
    multi-frame file."""
    path = Path(path)
    scan = read_scan(path, ReadOptions(frames=frames))
    if scan.kind != IMAGE:
        scan.close()
        raise InputImageError(f"is a volume ({scan.reader}), not a 2-D image: classify it with `tumor-edge "
                              "classify` or Classifier.classify, which cut it into slices", path)
    return list(scan.pictures)


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded scan as an 8-bit RGB Pillow image at its own size (the middle frame of a multi-frame file)."""
    return load_rgb_frames(path, "middle")[0].image
