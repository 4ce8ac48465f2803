"""2-D images Pillow reads (JPEG, PNG 8/16-bit, BMP, TIFF, GIF, WebP) as RGB frames: the `image` reader.

A file is opened only when it is a regular file (`base.open_regular`), and each frame's decoded size, taken from the
header, is checked against the caps (`caps`) before it is decoded. Multi-frame files (multi-page TIFF, animated
GIF) give the middle frame, every frame or one index, as multi-frame DICOM files do. Errors are one line naming
the file.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageMode, UnidentifiedImageError

from tumor_edge.errors import InputImageError
from tumor_edge.runtime.caps import Decoded, check_decoded, check_total
from tumor_edge.runtime.pixels import log, pil_to_rgb
from tumor_edge.runtime.readers.base import (
    IMAGE,
    Picture,
    ReadOptions,
    Scan,
    open_regular,
    release_frames,
    select_frames,
)


def read(path: Path, options: ReadOptions) -> Scan:
    """The `image` reader's `read`: the frames `options.frames` asks for."""
    pictures = read_frames(path, options.frames)
    return Scan(str(path), "image", IMAGE, pictures, pictures[0].count if pictures else 1)


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


def read_frames(path: Path, frames: str | int) -> list[Picture]:
    """The frames of a Pillow-readable file (`frames`: middle, all or an index), each checked against the caps
    from the header before it is decoded."""
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
                out.append(Picture(_rgb_or_error(image, path, owned=count == 1), index, count))
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
