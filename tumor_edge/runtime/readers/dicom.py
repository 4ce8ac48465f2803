"""The `dicom` reader: a DICOM file (`.dcm`, or no suffix and the DICM marker) as 8-bit grey frames, the way a
radiologist's viewer would show them.

pydicom is an optional extra (`tumor-edge[dicom]`) and is imported only when a DICOM file turns up, so the
device install stays small. The display pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT
(RescaleSlope/Intercept) -> VOI window from the file when present (else min-max over the frame) -> MONOCHROME1
inverted so that bright always means high signal, as in the JPEG scans the model was trained on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from tumor_edge.errors import InputImageError, first_line
from tumor_edge.runtime.readers.base import (
    IMAGE,
    Decoded,
    Picture,
    ReadOptions,
    Scan,
    check_decoded,
    check_inflated_size,
    open_regular,
    release_frames,
    row_blocks,
    select_frames,
)

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is one zlib stream
# Explicit-VR value representations whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


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


def _range(blocks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Min and max over blocks; NaN anywhere propagates, as np.min over the whole frame would."""
    lows, highs = zip(*((np.min(b), np.max(b)) for b in blocks))
    return float(np.min(lows)), float(np.max(highs))


def _min_max(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) * (255.0 / (hi - lo))


def _to_display(ds: Any, frame: int, stored: np.ndarray) -> np.ndarray:
    """Stored values of one frame (H, W) or (H, W, 3) -> uint8 (H, W) as a viewer shows them.

    Works in blocks of rows (the min-max range first, over all blocks), so a large frame never has several
    full-size float64 copies alive: same values as the whole-frame computation, a fraction of the memory."""
    height, width = stored.shape[:2]
    out = np.empty((height, width), dtype=np.uint8)
    blocks = row_blocks(height, width)
    if stored.ndim == 3:  # colour DICOM (pydicom gives RGB): luminance, as Pillow's "L" conversion does
        def grey(rows: slice) -> np.ndarray:
            return stored[rows, :, 0] * 0.299 + stored[rows, :, 1] * 0.587 + stored[rows, :, 2] * 0.114

        lo, hi = _range(grey(b) for b in blocks)
        for rows in blocks:
            out[rows] = np.clip(_min_max(grey(rows), lo, hi) + 0.5, 0, 255).astype(np.uint8)
        return out
    slope, intercept = modality_scaling(ds, frame)
    center = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    window_width = _first(_lookup(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    function = str(_lookup(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    window = VOI_FUNCTIONS.get(function, _linear)
    windowed = center is not None and window_width is not None and window_width > 1.0
    if not windowed:
        lo, hi = _range(stored[b].astype(np.float64) * slope + intercept for b in blocks)
    invert = is_monochrome1(ds)
    for rows in blocks:
        values = stored[rows].astype(np.float64) * slope + intercept
        display = window(values, center, window_width) if windowed else _min_max(values, lo, hi)
        if invert:
            display = 255.0 - display  # MONOCHROME1: low values are bright; the model expects bright = high
        out[rows] = np.clip(display + 0.5, 0, 255).astype(np.uint8)
    return out


def _transfer_syntax(fh: BinaryIO) -> tuple[str | None, int]:
    """The file meta group's TransferSyntaxUID and where the dataset starts, read by hand (a few hundred bytes)
    so that a deflated dataset can be measured before pydicom inflates all of it at once."""
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return None, 0
    position, syntax = 132, None
    while True:
        header = fh.read(8)
        if len(header) < 8 or struct.unpack("<H", header[:2])[0] != 2:
            return syntax, position
        element, vr = struct.unpack("<H", header[2:4])[0], header[4:6]
        if vr in _LONG_VRS:
            extra = fh.read(4)
            if len(extra) < 4:
                return syntax, position
            length, size = struct.unpack("<I", extra)[0], 12
        else:
            length, size = struct.unpack("<H", header[6:8])[0], 8
        if length > 65536:  # meta elements are short; this is not a meta group we understand
            return syntax, position
        value = fh.read(length)
        if element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        position += size + length


def _check_deflated(fh: BinaryIO, path: Path) -> None:
    syntax, start = _transfer_syntax(fh)
    if syntax == DEFLATED:
        fh.seek(start)
        check_inflated_size(fh, path)
    fh.seek(0)


def _check_header(ds: Any, path: Path) -> None:
    """Refuse, from the header alone, pixel data that would decode beyond the caps (or to nothing)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputImageError("DICOM file has no pixel data (a report, structured data or a header only)", path)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise InputImageError(f"DICOM header has no usable image size ({first_line(err)})", path) from None
    if "FloatPixelData" in ds:
        bits = 32
    elif "DoubleFloatPixelData" in ds:
        bits = 64
    check_decoded(Decoded(columns, rows, max(samples, 1), max(1, -(-bits // 8)), max(frames, 1)), path)


def read_dataset(path: Path, pixels: bool = True) -> Any:
    """The dataset of a DICOM file (`pixels=False`: the header only, for a series' first pass)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise InputImageError("reading DICOM needs pydicom: pip install 'tumor-edge[dicom]'", path) from None

    try:
        with open_regular(path) as fh:
            _check_deflated(fh, path)
            try:
                return pydicom.dcmread(fh, stop_before_pixels=not pixels)
            except InvalidDicomError:
                # A .dcm without the 128-byte preamble is still common in research exports; but forcing makes
                # pydicom "read" any bytes, so insist on the elements every image object has.
                fh.seek(0)
                ds = pydicom.dcmread(fh, force=True, stop_before_pixels=not pixels)
                if not any(tag in ds for tag in ("SOPClassUID", "Rows", "PixelData", "Modality")):
                    raise InputImageError("not a DICOM file (no DICM marker and no image elements)",
                                          path) from None
                return ds
    except InputImageError:
        raise
    except Exception as err:  # pydicom raises many types (EOFError, struct.error, ...) on damaged files
        release_frames(err)
        raise InputImageError(f"unreadable DICOM file ({type(err).__name__}: {first_line(err)})", path) from err


def pixel_array(ds: Any, path: Path) -> np.ndarray:
    """The stored pixel values, after the header size check every DICOM read makes (a series' slices too)."""
    _check_header(ds, path)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # missing decoder plugin (JPEG 2000, JPEG-LS), truncated data, bad attributes
        release_frames(err)
        raise InputImageError(f"cannot decode the DICOM pixel data ({type(err).__name__}: {first_line(err)}); "
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


def modality_scaling(ds: Any, frame: int = 0) -> tuple[float, float]:
    """(slope, intercept) of the modality LUT (RescaleSlope/Intercept, per frame when given): 1 and 0 when absent
    or unusable."""
    slope = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first(_lookup(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    return (slope if slope is not None and slope != 0 and np.isfinite(slope) else 1.0,
            intercept if intercept is not None and np.isfinite(intercept) else 0.0)


def is_monochrome1(ds: Any) -> bool:
    """MONOCHROME1 shows low values bright; a viewer (and this runtime) inverts it so bright means high signal."""
    return str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"


def read_dicom_frames(path: str | Path, frames: str | int = "middle") -> list[DicomFrame]:
    """The frames of a DICOM file to classify: the middle one (default), every frame in order, or one index.

    A volume's middle slice is the one most likely to show the anatomy the model was trained on; `all` lets a
    caller classify every slice and decide for itself.
    """
    path = Path(path)
    ds = read_dataset(path)
    pixels = pixel_array(ds, path)
    if pixels.size == 0 or pixels.ndim < 2:
        raise InputImageError(f"DICOM pixel data has an unusable shape {pixels.shape}", path)
    count = _frame_count(ds, pixels)
    if count == 1 and not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        pixels = pixels[0]  # a declared single frame stored with a leading axis
    out = []
    for i in select_frames(frames, count, path):
        stored = pixels if count == 1 else pixels[i]
        out.append(DicomFrame(_to_display(ds, i, stored[..., :3] if stored.ndim == 3 else stored), i, count))
    return out


def read(path: Path, options: ReadOptions) -> Scan:
    """The frames of a DICOM file: the middle one, all, or one index (`options.frames`)."""
    pictures = [Picture(Image.fromarray(f.pixels).convert("RGB"), f.index, f.count)
                for f in read_dicom_frames(path, options.frames)]
    return Scan(str(path), "dicom", IMAGE, pictures, pictures[0].count if pictures else 1)
