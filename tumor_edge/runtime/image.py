"""Decoding scans into 8-bit RGB arrays: the one code path training, parity and the device all use.

Every consumer (the training pipeline, export parity, `classify`, `bench`) turns a file into pixels here, so a
difference in decoding or resizing between training and the device cannot arise. Files are opened only when
they are regular files (`special_files`), and every decoder checks the decoded size its header promises
against the caps (`caps`) before decoding. Degenerate pictures that still classify (a constant image, some
non-finite pixels) are reported on the `tumor_edge.input` logger as warnings; the CLI prints them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from tumor_edge.errors import ConfigError, InputImageError
from tumor_edge.runtime.caps import (
    BLOCK_PIXELS,
    MAX_DECODED_BYTES,
    MAX_PIXELS,
    Decoded,
    check_decoded,
    check_file_size,
    check_total,
)
from tumor_edge.runtime.frames import FRAME_CHOICES, release_frames, select_frames
from tumor_edge.runtime.special_files import open_regular, read_head, stat_regular
from tumor_edge.runtime.uniform import band_values_if_constant

# Pillow's own decompression-bomb guard raises above twice its limit and only warns between one and two times;
# `caps.check_decoded` checks the header itself before decoding, so the warning (which would print on every such
# file) is silenced: the error we raise replaces it. A per-call warnings.catch_warnings() would do the same but
# is not thread-safe, and batches decode in threads.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

log = logging.getLogger("tumor_edge.input")

__all__ = ["DECODERS", "DICOM_SUFFIXES", "FRAME_CHOICES", "IMAGE_SUFFIXES", "MAX_DECODED_BYTES", "MAX_PIXELS",
           "SCAN_SUFFIXES", "Decoder", "Frame", "decoder_for", "is_dicom_file", "is_scan_file", "load_rgb",
           "load_rgb_frames", "pil_to_rgb", "select_frames", "to_uint8"]


def is_dicom_file(path: Path) -> bool:
    """DICOM files may lack a suffix; the 'DICM' magic at byte 128 identifies them (special files: never)."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_magic(path)


def is_scan_file(path: Path) -> bool:
    """Whether a file found while walking a folder should be treated as a scan (opens suffix-less files only
    when they are regular files, so a FIFO in the folder never blocks the walk)."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in SCAN_SUFFIXES:
        return True
    return suffix == "" and any(d.sniff is not None and d.sniff(path) for d in DECODERS)


def _finite_range(array: np.ndarray) -> tuple[float, float, int]:
    """(min, max, how many values are finite) over finite values, in blocks (no full-size float copy)."""
    flat = array.reshape(-1)
    if not np.issubdtype(flat.dtype, np.floating):
        return (float(flat.min()), float(flat.max()), flat.size) if flat.size else (0.0, 0.0, 0)
    lo, hi, count = np.inf, -np.inf, 0
    for start in range(0, flat.size, BLOCK_PIXELS):
        block = flat[start:start + BLOCK_PIXELS]
        block = block[np.isfinite(block)]
        if block.size:
            lo, hi, count = min(lo, float(block.min())), max(hi, float(block.max())), count + block.size
    return lo, hi, count


def _scale_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(array - lo) * 255 / (hi - lo), rounded, in blocks of float64; non-finite values become 0."""
    out = np.zeros(array.shape, dtype=np.uint8)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return out
    flat, flat_out = array.reshape(-1), out.reshape(-1)
    factor = 255.0 / (hi - lo)
    for start in range(0, flat.size, BLOCK_PIXELS):
        block = flat[start:start + BLOCK_PIXELS].astype(np.float64)  # in place from here: one block alive
        block -= lo
        block *= factor
        block += 0.5
        np.clip(block, 0, 255, out=block)
        block[np.isnan(block)] = 0
        flat_out[start:start + BLOCK_PIXELS] = block.astype(np.uint8)
    return out


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max scale a high-bit-depth or float image to 0..255 (no window information to go by).

    Works in blocks, so a 64 Mpx float image never needs a second 512 MB float64 copy."""
    array = np.asarray(array)
    lo, hi, _ = _finite_range(array)
    return _scale_uint8(array, lo, hi)


def pil_to_rgb(image: Image.Image, path: str | Path | None = None, owned: bool = False) -> Image.Image:
    """Any Pillow mode (grey, 16-bit, float, palette, RGBA, CMYK) to 8-bit RGB, EXIF orientation applied.

    With `path`, an image without a single finite value is an InputImageError and partly non-finite ones are
    logged as warnings naming the file. `owned`: the caller's image may be changed in place (the decoders' own
    images: a full-size copy less at the peak); the result may then be `image` itself."""
    if owned:
        ImageOps.exif_transpose(image, in_place=True)
    else:
        image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_MODES:
        array = np.asarray(image)
        lo, hi, finite = _finite_range(array)
        if path is not None and finite == 0:
            raise InputImageError("image holds no finite pixel values (all NaN or infinite)", path)
        if path is not None and finite < array.size:
            log.warning("%s: %d of %d pixels are NaN or infinite; they are shown black", path,
                        array.size - finite, array.size)
        return Image.fromarray(_scale_uint8(array, lo, hi)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Transparent regions become black, the background of an MRI slice.
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def warn_if_constant(image: Image.Image, path: str | Path, label: str | None = None) -> None:
    """A picture whose every pixel is equal still gets a label from a model; say that the label means nothing."""
    bands = band_values_if_constant(image)
    if bands is not None:
        values = sorted(set(bands))
        where = f" [{label}]" if label else ""
        log.warning("%s%s: constant image (every pixel is %s): its label means nothing", path, where,
                    values[0] if len(values) == 1 else bands)


@dataclass(frozen=True)
class Frame:
    """One decoded picture of a file: 8-bit RGB, and which frame it is when the file holds several."""

    image: Image.Image
    index: int = 0
    count: int = 1

    @property
    def label(self) -> str | None:
        """'frame 12 of 25' (0-based index) for multi-frame files, None otherwise."""
        return f"frame {self.index} of {self.count}" if self.count > 1 else None


def _pil_size(image: Image.Image, frames: int = 1) -> Decoded:
    """What Pillow will allocate for `frames` frames of this image (taken from the header, nothing decoded)."""
    try:
        mode = ImageMode.getmode(image.mode)
        channels, sample = len(mode.bands), max(1, int(mode.typestr[-1]))
    except (KeyError, ValueError, IndexError):
        channels, sample = 4, 1
    width, height = image.size
    return Decoded(width, height, channels, sample, frames)


def _decode_error(err: Exception, path: Path) -> InputImageError:
    """A Pillow failure as the one line a user sees."""
    if isinstance(err, Image.DecompressionBombError):
        return InputImageError(f"image too large to be a scan ({err})", path)
    if isinstance(err, UnidentifiedImageError):
        return InputImageError("not an image file Pillow can read", path)
    if isinstance(err, PermissionError):
        return InputImageError("permission denied", path)
    if isinstance(err, MemoryError):
        return InputImageError("out of memory while decoding", path)
    # Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, struct.error...
    return InputImageError(f"corrupt or truncated image ({type(err).__name__}: {_short(err)})", path)


def _pil_frames(path: Path, frames: str | int) -> list[Frame]:
    with open_regular(path) as fh:
        image = None
        try:
            image = Image.open(fh)
            count = max(1, int(getattr(image, "n_frames", 1) or 1))
            indices = select_frames(frames, count, path)
            check_decoded(_pil_size(image, len(indices)), path)
            out, total = [], 0
            for index in indices:
                if count > 1:
                    image.seek(index)
                size = _pil_size(image)
                check_decoded(size, path)
                total += size.nbytes
                check_total(total, path)
                image.load()
                label = f"frame {index} of {count}" if count > 1 else None
                rgb = _rgb_or_error(image, path, owned=count == 1)  # frames of one file: copies
                warn_if_constant(rgb, path, label)
                out.append(Frame(rgb, index, count))
            if count > 1 and frames == "middle":
                log.warning("%s: holds %d frames; classifying the middle one, frame %d (all frames can be "
                            "asked for)", path, count, indices[0])
            return out
        except Exception as err:
            if image is not None:
                image.close()
            release_frames(err)
            if isinstance(err, InputImageError):
                raise
            raise _decode_error(err, path) from err


def _dicom_frames(path: Path, frames: str | int) -> list[Frame]:
    from tumor_edge.runtime.dicom import read_dicom_frames  # here: a JPEG run never loads the DICOM reader

    out = []
    for f in read_dicom_frames(path, frames):
        rgb = Image.fromarray(f.pixels).convert("RGB")
        frame = Frame(rgb, f.index, f.count)
        warn_if_constant(rgb, path, frame.label)
        out.append(frame)
    return out


def _has_dicom_magic(path: Path) -> bool:
    return read_head(path, 132)[128:132] == b"DICM"


@dataclass(frozen=True)
class Decoder:
    """One input type: the suffixes it claims, how to recognise one of its files by content (DICOM files often
    have no suffix), and how to decode a file into frames. Adding an input type is one entry in DECODERS; every
    consumer (classify, parity, verify, serve, training) decodes through `load_rgb_frames`, so all get it."""

    name: str
    suffixes: frozenset[str]
    decode: Callable[[Path, str | int], list[Frame]]
    sniff: Callable[[Path], bool] | None = None


# In order: the first whose suffix or content matches decodes the file; Pillow (last) takes everything else and
# reports a file that is no image.
DECODERS: tuple[Decoder, ...] = (
    Decoder("dicom", DICOM_SUFFIXES, _dicom_frames, _has_dicom_magic),
    Decoder("image", IMAGE_SUFFIXES, _pil_frames),
)
SCAN_SUFFIXES: frozenset[str] = frozenset().union(*(d.suffixes for d in DECODERS))


def decoder_for(path: Path) -> Decoder:
    suffix = path.suffix.lower()
    for decoder in DECODERS:
        if suffix in decoder.suffixes or (decoder.sniff is not None and decoder.sniff(path)):
            return decoder
    return DECODERS[-1]


def load_rgb_frames(path: str | Path, frames: str | int = "middle") -> list[Frame]:
    """The frames of a scan file to classify: one for ordinary images; the middle or all frames of a DICOM
    series, a multi-page TIFF or an animated GIF (the same choice for every multi-frame kind)."""
    path = Path(path)
    if not (frames in FRAME_CHOICES or (isinstance(frames, int) and not isinstance(frames, bool))):
        raise ConfigError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")
    info = stat_regular(path)
    if info.st_size == 0:
        raise InputImageError("empty file (0 bytes)", path)
    check_file_size(info.st_size, path)
    return decoder_for(path).decode(path, frames)


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded scan as an 8-bit RGB Pillow image at its own size (the middle frame of a multi-frame file,
    the one `classify` takes by default)."""
    return load_rgb_frames(path, "middle")[0].image


def _rgb_or_error(image: Image.Image, path: Path, owned: bool = False) -> Image.Image:
    try:
        return pil_to_rgb(image, path, owned)
    except InputImageError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # e.g. a LAB TIFF, a broken EXIF block
        raise InputImageError(f"cannot convert this image to RGB ({_short(err)})", path) from err


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""
