"""2-D images Pillow reads (JPEG, PNG 8/16-bit, BMP, TIFF, GIF, WebP) as RGB frames: the `image` reader, and the
conversions of decoded pixels to 8-bit RGB it and the classifier's in-memory inputs share.

A file is opened only when it is a regular file (`base.open_regular`), and each frame's decoded size, taken from the
header, is checked against the caps (`caps`) before it is decoded. Multi-frame files (multi-page TIFF, animated
GIF) give the middle frame, every frame or one index, as multi-frame DICOM files do. Errors are one line naming
the file.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from tumor_edge.errors import InputImageError, first_line
from tumor_edge.runtime.readers.base import (
    BLOCK_PIXELS,
    IMAGE,
    MAX_PIXELS,
    Decoded,
    Picture,
    ReadOptions,
    Scan,
    check_decoded,
    check_total,
    open_regular,
    release_frames,
    select_frames,
)


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
    return InputImageError(f"corrupt or truncated image ({type(err).__name__}: {first_line(err)})", path)


def read(path: Path, options: ReadOptions) -> Scan:
    """The `image` reader's `read`: the frames of a Pillow-readable file `options.frames` asks for (middle, all or
    an index), each checked against the caps from the header before it is decoded."""
    frames = options.frames
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
                try:
                    rgb = pil_to_rgb(image, path, owned=count == 1)
                except (OSError, ValueError, SyntaxError) as err:  # e.g. a LAB TIFF, a broken EXIF block
                    raise InputImageError(f"cannot convert this image to RGB ({first_line(err)})", path) from err
                out.append(Picture(rgb, index, count))
            if count > 1 and frames == "middle":
                log.warning("%s: holds %d frames; classifying the middle one, frame %d (all frames can be "
                            "asked for)", path, count, indices[0])
            return Scan(str(path), "image", IMAGE, out, count)
        except Exception as err:
            if image is not None:
                image.close()
            release_frames(err)
            if isinstance(err, InputImageError):
                raise
            raise _decode_error(err, path) from err


# Decoded pixels to 8-bit RGB: high-bit-depth and float pictures are min-max scaled in blocks (no full-size float
# copy), transparency becomes the black background of an MRI slice, EXIF orientation is applied. Pictures that
# still classify with some non-finite pixels are reported on the `tumor_edge.input` logger as warnings.

# Pillow's own decompression-bomb guard raises above twice its limit and only warns between one and two times;
# `caps.check_decoded` checks the header itself before decoding, so the warning (which would print on every such
# file) is silenced: the error we raise replaces it. A per-call warnings.catch_warnings() would do the same but
# is not thread-safe, and batches decode in threads.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

log = logging.getLogger("tumor_edge.input")


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
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
