"""The `dicom` reader: a DICOM file (`.dcm`, or no suffix and the DICM marker) as 8-bit grey frames, the way a
radiologist's viewer would show them.

pydicom is an optional extra (`tumor-edge[dicom]`) and is imported only when a DICOM file turns up, so the
device install stays small. The display pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT
(RescaleSlope/Intercept) -> VOI window from the file when present (else min-max over the frame) -> MONOCHROME1
inverted so that bright always means high signal, as in the JPEG scans the model was trained on.

The `dicom series` reader: a folder holding one DICOM series (one file a slice) as a volume cut into slices. A
folder is a series when every visible file directly in it is a single-frame DICOM image and all share one
SeriesInstanceUID (two files at least); a folder where several files share a series but not all of them (two
series, or a series and a stray localizer) is refused: one series a folder. Headers are read first (no pixels)
and the stack checked against the cap before the slices are read one file at a time, ordered along the slice
normal, with the single-file modality LUT and MONOCHROME1 rules.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from tumor_edge.errors import InputImageError, first_line
from tumor_edge.runtime.readers import is_dicom_file
from tumor_edge.runtime.readers.base import (
    FOLDER_FILES,
    FOLDER_REFUSED,
    FOLDER_SCAN,
    IMAGE,
    Decoded,
    Picture,
    ReadOptions,
    Scan,
    check_decoded,
    check_inflated_size,
    check_volume_size,
    open_regular,
    release_frames,
    row_blocks,
    select_frames,
)
from tumor_edge.runtime.volume import Volume, closest_ras, ras_spacing, to_ras, usable_scaling, volume_scan

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is one zlib stream
# Explicit-VR value representations whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class DicomFrame:
    """One displayable frame: uint8 (H, W), its 0-based index and how many frames the file holds."""

    pixels: np.ndarray
    index: int
    count: int


# VOILUTFunction (0028,1056) -> window function on modality values (x, center, width), giving 0..255. LINEAR is the
# default: PS3.3 C.11.2.1.2.1's classic window, with its half-pixel offsets.
VOI_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "LINEAR": lambda x, center, width: np.clip(((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0),
    "LINEAR_EXACT": lambda x, center, width: np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0),
    "SIGMOID": lambda x, center, width: 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width)),
}


def _first(value: Any) -> float | None:
    """WindowCenter and friends may be multi-valued (several presets); the first is the default view."""
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _lookup(ds: Any, frame: int, sequence: str, name: str) -> Any:
    """`name` from the functional-group item (per-frame first, then shared) of an enhanced multi-frame object, else
    from the dataset itself."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            item = getattr(getattr(ds, groups)[index], sequence)[0]
        except (AttributeError, IndexError, TypeError, KeyError):
            continue
        value = getattr(item, name, None)
        return value if value is not None else getattr(ds, name, None)
    return getattr(ds, name, None)


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
    window = VOI_FUNCTIONS.get(function, VOI_FUNCTIONS["LINEAR"])
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


def pixel_array(ds: Any, path: Path) -> np.ndarray:
    """The stored pixel values, once the header alone shows they would decode within the caps (and to something):
    the check every DICOM read makes (a series' slices too)."""
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
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # missing decoder plugin (JPEG 2000, JPEG-LS), truncated data, bad attributes
        release_frames(err)
        raise InputImageError(f"cannot decode the DICOM pixel data ({type(err).__name__}: {first_line(err)}); "
                              "compressed transfer syntaxes may need pylibjpeg or gdcm", path) from err


def read_dataset(path: Path, pixels: bool = True) -> Any:
    """The dataset of a DICOM file (`pixels=False`: the header only, for a series' first pass)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise InputImageError("reading DICOM needs pydicom: pip install 'tumor-edge[dicom]'", path) from None

    try:
        with open_regular(path) as fh:
            syntax, start = _transfer_syntax(fh)
            if syntax == DEFLATED:
                fh.seek(start)
                check_inflated_size(fh, path)
            fh.seek(0)
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


def modality_scaling(ds: Any, frame: int = 0) -> tuple[float, float]:
    """(slope, intercept) of the modality LUT (RescaleSlope/Intercept, per frame when given): 1 and 0 when absent
    or unusable."""
    return usable_scaling(*(_first(_lookup(ds, frame, "PixelValueTransformationSequence", name))
                            for name in ("RescaleSlope", "RescaleIntercept")))


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
    declared = int(getattr(ds, "NumberOfFrames", 1) or 1)  # a number: pixel_array checked the header
    stack = pixels.ndim == 4 or (pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1)
    count = declared if declared > 1 and stack else 1
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


# ---- the `dicom series` reader --------------------------------------------------------------------------------

MAX_LISTED_SERIES = 4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SliceHeader:
    """What one file's header says about its place in a series."""

    path: Path
    series: str | None  # SeriesInstanceUID
    label: str  # SeriesNumber and SeriesDescription, for messages
    rows: int
    columns: int
    bytes_per_sample: int
    samples: int
    frames: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row cosine, column cosine (LPS)
    position: tuple[float, float, float] | None  # ImagePositionPatient (LPS, mm)
    pixel_spacing: tuple[float, float] | None  # between rows, between columns (mm)
    thickness: float | None
    instance: int | None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == count and all(np.isfinite(out)) else None


def _int(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def header(path: Path) -> SliceHeader:
    ds = read_dataset(path, pixels=False)  # sizes, positions, UIDs: no pixel data yet
    rows, columns = _int(getattr(ds, "Rows", None), 0), _int(getattr(ds, "Columns", None), 0)
    number = getattr(ds, "SeriesNumber", None)
    description = str(getattr(ds, "SeriesDescription", "") or "").strip()[:40]
    uid = getattr(ds, "SeriesInstanceUID", None)
    label = " ".join(part for part in (f"series {number}" if number not in (None, "") else "",
                                       repr(description) if description else "") if part) or f"series {uid}"
    thickness = _floats([getattr(ds, "SliceThickness", None)], 1)
    return SliceHeader(path, str(uid) if uid else None, label, rows or 0, columns or 0,
                       max(1, -(-(_int(getattr(ds, "BitsAllocated", 16), 16) or 16) // 8)),
                       _int(getattr(ds, "SamplesPerPixel", 1), 1) or 1, _int(getattr(ds, "NumberOfFrames", 1), 1) or 1,
                       _floats(getattr(ds, "ImageOrientationPatient", None), 6),
                       _floats(getattr(ds, "ImagePositionPatient", None), 3),
                       _floats(getattr(ds, "PixelSpacing", None), 2),
                       thickness[0] if thickness else None, _int(getattr(ds, "InstanceNumber", None), None))


def folder_dicom_files(folder: Path) -> tuple[list[Path], bool]:
    """(the visible regular files directly in `folder`, sorted; whether it holds anything else: a subfolder, a
    special file). Hidden names are skipped."""
    files, other = [], False
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                other = True
                continue
            if stat.S_ISREG(mode):
                files.append(Path(entry.path))
            else:
                other = True
    return files, other


def series_folder_role(folder: Path) -> tuple[str, str | None]:
    """FOLDER_SCAN when `folder` (two or more files, all DICOM, no subfolders) is one series, FOLDER_REFUSED (and
    why) when it mixes several multi-file series, else FOLDER_FILES (its files are classified one by one). Reads
    headers only; without pydicom it is a folder of images (each then says which extra it needs)."""
    try:
        files, other = folder_dicom_files(folder)
    except OSError:
        return FOLDER_FILES, None  # walking the folder reports it
    if other or len(files) < 2 or not all(is_dicom_file(f) for f in files):
        return FOLDER_FILES, None
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return FOLDER_FILES, None
    headers = []
    for path in files:
        try:
            headers.append(header(path))
        except Exception:  # an unreadable file: reading the series (or the image) names it
            continue
    if any(h.frames > 1 for h in headers):
        return FOLDER_FILES, None  # multi-frame files are volumes of their own (`--frames`)
    groups = Counter(h.series or f"no SeriesInstanceUID: {h.path.name}" for h in headers)  # never a series
    multi = {uid: n for uid, n in groups.items() if n >= 2 and not uid.startswith("no SeriesInstanceUID")}
    if not multi:
        return FOLDER_FILES, None
    if len(groups) == 1:
        return FOLDER_SCAN, None  # with unreadable files among it, reading the series names them
    labels = {h.series or f"no SeriesInstanceUID: {h.path.name}": h.label for h in headers}
    listed = [f"{labels[uid]} ({n} file{'s' if n != 1 else ''})" for uid, n in groups.most_common()]
    more = f", and {len(listed) - MAX_LISTED_SERIES} more" if len(listed) > MAX_LISTED_SERIES else ""
    return FOLDER_REFUSED, (f"holds {len(groups)} DICOM series ({'; '.join(listed[:MAX_LISTED_SERIES])}{more}); "
                            "a series folder must hold one: put each series in its own folder")


def _stack_geometry(headers: list[SliceHeader], folder: Path, notes: list[str]
                    ) -> tuple[list[SliceHeader], np.ndarray, tuple[float, float, float]]:
    """Slices in order along their normal, the voxel-to-patient direction matrix (RAS, unit columns) of the
    array (slice, row, column), and its voxel sizes."""
    first = headers[0]
    oriented = all(h.orientation is not None and h.position is not None for h in headers)
    if oriented:
        if any(not np.allclose(h.orientation, first.orientation, atol=1e-3) for h in headers):
            raise InputImageError("DICOM series files have different orientations (not one stack of slices)",
                                  folder)
        row_cos, col_cos = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
        normal = np.cross(row_cos, col_cos)
        if np.linalg.norm(normal) < 0.5:
            raise InputImageError("DICOM ImageOrientationPatient is not two perpendicular directions", folder)
        distance = {h.path: float(np.dot(h.position, normal)) for h in headers}
        headers = sorted(headers, key=lambda h: distance[h.path])
        gaps = np.diff([distance[h.path] for h in headers])
        if np.any(np.abs(gaps) < 1e-3):
            raise InputImageError("DICOM series has two slices at the same position (duplicate files, or "
                                  "several acquisitions in one series)", folder)
        step = float(np.median(gaps))
        if gaps.max() > 1.5 * gaps.min():
            notes.append(f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm); {step:.3g} mm assumed")
    else:
        notes.append("no ImageOrientationPatient/ImagePositionPatient in the files: slices taken as axial, in "
                     "InstanceNumber order")
        row_cos, col_cos, normal = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
        headers = sorted(headers, key=lambda h: (h.instance is None, h.instance or 0, h.path.name))
        step = first.thickness if first.thickness and first.thickness > 0 else 1.0
    spacing = first.pixel_spacing if first.pixel_spacing and min(first.pixel_spacing) > 0 else None
    if spacing is None:
        notes.append("no PixelSpacing in the files; 1 mm assumed")
        spacing = (1.0, 1.0)
    direction = LPS_TO_RAS @ np.stack([normal, col_cos, row_cos], axis=1)
    return headers, direction, (abs(step), spacing[0], spacing[1])


def read_series_folder(folder: Path, options: ReadOptions) -> Scan:
    """A DICOM series folder's slices along `options.axis` (`options.slices` of them); one-line errors for a folder
    that is not one readable stack."""
    files = [f for f in folder_dicom_files(folder)[0] if is_dicom_file(f)]
    if len(files) < 2:
        raise InputImageError("a DICOM series folder needs at least two slice files", folder)
    headers = [header(path) for path in files]  # an unreadable file: its own one-line error
    if len({h.series for h in headers}) > 1:  # the folder changed since `series_folder_role` called it one series
        raise InputImageError("files of several DICOM series in one folder", folder)
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) > 1:
        listed = ", ".join(f"{c}x{r} ({n} files)" for (r, c), n in sizes.most_common(4))
        raise InputImageError(f"DICOM series files have different image sizes ({listed}): not one stack", folder)
    if any(h.samples != 1 for h in headers):
        raise InputImageError("DICOM series of colour images: classify volumes of grey MR slices", folder)
    first = headers[0]
    check_volume_size((len(headers), first.rows, first.columns), max(h.bytes_per_sample for h in headers), folder)
    notes: list[str] = []
    headers, direction, spacing = _stack_geometry(headers, folder, notes)
    stored = slope = intercept = None
    invert = False
    for k, h in enumerate(headers):
        ds = read_dataset(h.path)
        pixels = pixel_array(ds, h.path)
        if pixels.shape != (first.rows, first.columns):
            raise InputImageError(f"DICOM slice {h.path.name} holds pixels of shape {pixels.shape}, not "
                                  f"{first.rows}x{first.columns} like the rest of its series", folder)
        if stored is None:
            stored = np.empty((len(headers), first.rows, first.columns), dtype=pixels.dtype)
            slope = np.ones((len(headers), 1, 1), dtype=np.float32)
            intercept = np.zeros((len(headers), 1, 1), dtype=np.float32)
            invert = is_monochrome1(ds)
        elif pixels.dtype != stored.dtype:
            raise InputImageError(f"DICOM slice {h.path.name} stores {pixels.dtype} pixels, the rest of its series "
                                  f"{stored.dtype}", folder)
        stored[k] = pixels
        slope[k], intercept[k] = modality_scaling(ds)
        del ds, pixels
    if invert:  # MONOCHROME1: bright must mean high signal, as for single DICOM files
        top = float(max(np.max(stored[k]) * slope[k, 0, 0] + intercept[k, 0, 0] for k in range(len(stored))))
        slope, intercept = -slope, top - intercept
    order = closest_ras(direction)  # voxel axes (slice, row, column) -> RAS
    shape = (len(headers), first.rows, first.columns)
    volume = Volume(str(folder), to_ras(stored, order), ras_spacing(spacing, order),
                    to_ras(np.broadcast_to(slope, shape), order), to_ras(np.broadcast_to(intercept, shape), order),
                    notes)
    return volume_scan(volume, options, "dicom series")
