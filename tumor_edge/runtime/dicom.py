"""DICOM scans to 8-bit grey frames, the way a radiologist's viewer would show them.

pydicom is an optional extra (`tumor-edge[dicom]`) and is imported only when a DICOM file turns up, so the
device install stays small. The display pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT
(RescaleSlope/Intercept) -> VOI window from the file when present (else min-max over the frame) -> MONOCHROME1
inverted so that bright always means high signal, as in the JPEG scans the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.errors import InputImageError

# Which frames of a multi-frame file (an enhanced MR series, a cine) to classify.
FRAME_CHOICES = ("middle", "all")


@dataclass(frozen=True)
class DicomFrame:
    """One displayable frame: uint8 (H, W), its 0-based index and how many frames the file holds."""

    pixels: np.ndarray
    index: int
    count: int


def _linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    # PS3.3 C.11.2.1.2.1: the classic window, with its half-pixel offsets.
    return np.clip(((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0)


def _linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)


def _sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


# VOILUTFunction (0028,1056) -> window function on modality values, giving 0..255. LINEAR is the default.
VOI_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "LINEAR": _linear,
    "LINEAR_EXACT": _linear_exact,
    "SIGMOID": _sigmoid,
}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def _first(value: Any) -> float | None:
    """WindowCenter and friends may be multi-valued (several presets); the first is the default view."""
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _frame_item(ds: Any, frame: int, sequence: str) -> Any:
    """The functional-group item (per-frame first, then shared) of an enhanced multi-frame object, if any."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            item = getattr(ds, groups)[index]
            return getattr(item, sequence)[0]
        except (AttributeError, IndexError, TypeError, KeyError):
            continue
    return None


def _lookup(ds: Any, frame: int, sequence: str, name: str) -> Any:
    item = _frame_item(ds, frame, sequence)
    value = getattr(item, name, None) if item is not None else None
    return value if value is not None else getattr(ds, name, None)


def _modality(ds: Any, frame: int, pixels: np.ndarray) -> np.ndarray:
    slope = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    values = pixels.astype(np.float64)
    if slope is not None and slope != 0:
        values = values * slope
    if intercept is not None:
        values = values + intercept
    return values


def _min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) * (255.0 / (hi - lo))


def _to_display(ds: Any, frame: int, stored: np.ndarray) -> np.ndarray:
    """Stored values of one frame (H, W) or (H, W, 3) -> uint8 (H, W) as a viewer shows them."""
    if stored.ndim == 3:  # colour DICOM (pydicom gives RGB): luminance, as Pillow's "L" conversion does
        grey = stored[..., 0] * 0.299 + stored[..., 1] * 0.587 + stored[..., 2] * 0.114
        return np.clip(_min_max(grey) + 0.5, 0, 255).astype(np.uint8)
    values = _modality(ds, frame, stored)
    center = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    function = str(_lookup(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    window = VOI_FUNCTIONS.get(function, _linear)
    if center is not None and width is not None and width > 1.0:
        display = window(values, center, width)
    else:
        display = _min_max(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        display = 255.0 - display  # MONOCHROME1: low values are bright; the model expects bright = high
    return np.clip(display + 0.5, 0, 255).astype(np.uint8)


def _read_dataset(path: Path) -> Any:
    pydicom = _pydicom()
    if pydicom is None:
        raise InputImageError("reading DICOM needs pydicom: pip install 'tumor-edge[dicom]'", path)
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(str(path))
        except InvalidDicomError:
            # A .dcm without the 128-byte preamble is still common in research exports; but forcing makes
            # pydicom "read" any bytes, so insist on the elements every image object has.
            ds = pydicom.dcmread(str(path), force=True)
            if not any(tag in ds for tag in ("SOPClassUID", "Rows", "PixelData", "Modality")):
                raise InputImageError("not a DICOM file (no DICM marker and no image elements)", path) from None
            return ds
    except InputImageError:
        raise
    except Exception as err:  # pydicom raises many types (EOFError, struct.error, ...) on damaged files
        raise InputImageError(f"unreadable DICOM file ({type(err).__name__}: {_short(err)})", path) from err


def _pixel_array(ds: Any, path: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputImageError("DICOM file has no pixel data (a report, structured data or a header only)", path)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # missing decoder plugin (JPEG 2000, JPEG-LS), truncated data, bad attributes
        raise InputImageError(f"cannot decode the DICOM pixel data ({type(err).__name__}: {_short(err)}); "
                              "compressed transfer syntaxes may need pylibjpeg or gdcm", path) from err


def _frame_count(ds: Any, pixels: np.ndarray) -> int:
    try:
        declared = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        declared = 1
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    grey_stack = pixels.ndim == 3 and samples == 1
    colour_stack = pixels.ndim == 4
    return declared if declared > 1 and (grey_stack or colour_stack) else 1


def _select(frames: str | int, count: int, path: Path) -> list[int]:
    if frames == "all":
        return list(range(count))
    if frames == "middle":
        return [count // 2]
    if isinstance(frames, int) and not isinstance(frames, bool):
        if not 0 <= frames < count:
            raise InputImageError(f"no frame {frames}: the file holds {count}", path)
        return [frames]
    raise ValueError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")


def read_dicom_frames(path: str | Path, frames: str | int = "middle") -> list[DicomFrame]:
    """The frames of a DICOM file to classify: the middle one (default), every frame in order, or one index.

    A volume's middle slice is the one most likely to show the anatomy the model was trained on; `all` lets a
    caller classify every slice and decide for itself.
    """
    path = Path(path)
    if not (frames in FRAME_CHOICES or isinstance(frames, int)):
        raise ValueError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")
    ds = _read_dataset(path)
    pixels = _pixel_array(ds, path)
    if pixels.size == 0 or pixels.ndim < 2:
        raise InputImageError(f"DICOM pixel data has an unusable shape {pixels.shape}", path)
    count = _frame_count(ds, pixels)
    if count == 1 and not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        pixels = pixels[0]  # a declared single frame stored with a leading axis
    out = []
    for i in _select(frames, count, path):
        stored = pixels if count == 1 else pixels[i]
        out.append(DicomFrame(_to_display(ds, i, stored[..., :3] if stored.ndim == 3 else stored), i, count))
    return out


def read_dicom(path: str | Path, frame: int | None = None) -> np.ndarray:
    """One DICOM frame as uint8 (H, W): the middle frame of a multi-frame file unless `frame` says which."""
    return read_dicom_frames(path, "middle" if frame is None else frame)[0].pixels


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""
