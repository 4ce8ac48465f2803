"""Inputs and preprocessing: command-line PATH arguments to the scan files to classify (and the problems found on
the way), 2-D scans decoded into 8-bit RGB frames, and the preprocessing spec applied to them.

Decoding and preprocessing are the one code path training, parity and the device all use, so the pixels a model
saw in training are the pixels it sees on the device. The readers' registry decodes and says what is a scan (a
folder a folder reader claims, a DICOM series, is one item); volumes are refused by `load_rgb_frames` (`classify`
and `Classifier.classify` slice them). Nothing the user named may vanish without a word: a folder that cannot be
entered, a special file among the scans, a folder named like an image, a folder with no scans each become a
problem the batch reports. The spec itself (`Preprocessing`, the names of resize filters and scalings) is a
contract (`tumor_edge.contracts.preprocessing`); this module maps each name to the code that applies it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import InputImageError
from tumor_edge.runtime.readers import claimed_suffix, folder_role, is_volume, read_scan
from tumor_edge.runtime.readers import is_scan_file as _is_scan
from tumor_edge.runtime.readers.base import (
    FOLDER_REFUSED,
    FOLDER_SCAN,
    IMAGE,
    Picture,
    ReadOptions,
    file_kind,
    reason,
)


@dataclass(frozen=True)
class InputProblem:
    """A path that yields no scan and why: `message` is the one line to show (it names the path)."""

    source: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class ScannedInputs:
    """The scan files to classify (in order) and the problems met while finding them."""

    files: list[Path] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    series: set[Path] = field(default_factory=set)  # items of `files` that are DICOM series folders

    def is_volume(self, path: Path) -> bool:
        """Whether `path` (an item of `files`) is classified as a volume (its reader says so: NIfTI, a series)."""
        return path in self.series or is_volume(path)


def scan_inputs(paths: Iterable[str | Path]) -> ScannedInputs:
    """Files as given (whatever their suffix, whatever their kind: a wrong one is reported when decoding, which
    never opens a special file), folders walked for scan files in sorted order (hidden files and folders
    skipped, symbolic links to folders followed once). A named path that does not exist or cannot be reached is
    kept, so that the batch reports it as a failure with the others instead of stopping before it starts."""
    out = ScannedInputs()
    for raw in paths:
        path = Path(raw)
        if not os.path.isdir(path):  # missing, or under a folder that cannot be entered: decoding says which
            out.files.append(path)
            continue
        reported = len(out.problems)
        found = _walk(path, out.problems, out.series)
        if not found and len(out.problems) == reported:  # an unreadable folder is reported once, as that
            out.problems.append(InputProblem(str(path), "no scan files in this folder"))
        out.files.extend(found)
    return out


def _walk(top: Path, problems: list[InputProblem], series: set[Path]) -> list[Path]:
    """Scan files (and series folders, also added to `series`) under `top`, sorted; problems appended. An explicit
    stack, so no depth is too deep."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:  # a symbolic link back up the tree
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as err:
            problems.append(InputProblem(str(folder), f"cannot read this folder ({reason(err)}); "
                                                      "the scans in it were skipped"))
            continue
        before, subfolders = len(found), 0
        _, role, why = folder_role(folder)  # a DICOM series folder is one scan (the registry's folder readers)
        if role == FOLDER_SCAN:
            found.append(folder)
            series.add(folder)
            continue
        if role == FOLDER_REFUSED:
            problems.append(InputProblem(str(folder), f"{why}; its files were skipped"))
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            try:
                kind = file_kind(os.stat(path).st_mode)
            except OSError:
                kind = None  # a dangling link, or vanished
            if kind == "a folder":
                stack.append(path)
                subfolders += 1
            elif kind == "a regular file":
                if _is_scan(path):
                    found.append(path)
            elif kind is None:
                if claimed_suffix(path) is not None:
                    found.append(path)  # a dangling link named like a scan: decoding reports it
            else:
                problems.append(InputProblem(str(path), f"is {kind}, not a regular file: skipped, not opened"))
        if folder != top and claimed_suffix(folder) is not None and len(found) == before and not subfolders:
            problems.append(InputProblem(str(folder), "is a folder named like a scan, and holds no scans"))
    return sorted(found)


def is_scan_file(path: Path) -> bool:
    """Whether a file found while walking a folder is a 2-D scan (training data, bench and export samples are
    2-D images; `scan_inputs` also lists volumes)."""
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


# ---- preprocessing ------------------------------------------------------------------------------------------------

RESIZE_METHODS: dict[str, int] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# name -> its function on float32 RGB 0..255: a new convention is one line here and one in the contract's
# SCALING_DESCRIPTIONS.
SCALINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "unit": lambda x: x / np.float32(255.0),
    "symmetric": lambda x: x / np.float32(127.5) - np.float32(1.0),
    "caffe": lambda x: x[..., ::-1] - _CAFFE_MEAN_BGR,
    "torch": lambda x: (x / np.float32(255.0) - _IMAGENET_MEAN) / _IMAGENET_STD,
}


def resize_rgb(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Resize a decoded RGB image to the model's size: uint8 array (H, W, 3)."""
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), RESIZE_METHODS[spec.resize])
    return np.asarray(image, dtype=np.uint8)


def load_resized(path: str | Path, spec: Preprocessing) -> np.ndarray:
    """A scan file as uint8 (H, W, 3) at the model's size; the cacheable half of preprocessing."""
    return resize_rgb(load_rgb(path), spec)


def scale(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 pixels (..., H, W, 3) to the float32 values the model takes."""
    return SCALINGS[spec.scaling](np.asarray(pixels, dtype=np.float32)).astype(np.float32, copy=False)


def preprocess_image(path: str | Path, spec: Preprocessing) -> np.ndarray:
    """A scan file to the model's float32 (H, W, 3) input."""
    return scale(load_resized(path, spec), spec)
