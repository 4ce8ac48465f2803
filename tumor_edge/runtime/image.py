"""Decoding scans into 8-bit RGB arrays: the one code path training, parity and the device all use.

Every consumer (the training pipeline, export parity, `classify`, `bench`) turns a file into pixels here, so a
difference in decoding or resizing between training and the device cannot arise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tumor_edge.errors import InputImageError

# Pillow's own decompression-bomb guard: ~90 Mpx warns, twice that raises. A brain MRI slice is < 1 Mpx, so a
# 64 Mpx ceiling is generous and stops a hostile file before it eats the device's memory. Pillow raises
# DecompressionBombError above twice its limit; between one and two times it only warns, so `open_pil` checks
# the header size itself and the warning (which would print on every such file) is silenced: the error we raise
# replaces it. A per-call warnings.catch_warnings() would do the same but is not thread-safe, and batches decode
# in threads.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def is_dicom_file(path: Path) -> bool:
    """DICOM files may lack a suffix; the 'DICM' magic at byte 128 identifies them."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_scan_file(path: Path) -> bool:
    """Whether a file found while walking a folder should be treated as a scan."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and is_dicom_file(path)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max scale a high-bit-depth or float image to 0..255 (no window information to go by)."""
    array = np.asarray(array, dtype=np.float64)
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.clip((array - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (grey, 16-bit, float, palette, RGBA, CMYK) to 8-bit RGB, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(to_uint8(np.asarray(image))).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Transparent regions become black, the background of an MRI slice.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputImageError("no such file", path)
    if path.is_dir():
        raise InputImageError("is a folder, not an image", path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputImageError(f"cannot read ({err.strerror or err})", path) from err
    if size == 0:
        raise InputImageError("empty file (0 bytes)", path)


def open_pil(path: Path) -> Image.Image:
    """Open and fully decode an image file, turning every failure into a one-line InputImageError."""
    path = Path(path)
    _check_file(path)
    if is_dicom_file(path):
        from tumor_edge.runtime.dicom import read_dicom

        return Image.fromarray(read_dicom(path))
    try:
        image = Image.open(path)
        width, height = image.size
        if width * height > MAX_PIXELS:
            image.close()
            raise InputImageError(f"image too large to be a scan ({width}x{height} = {width * height} pixels, "
                                  f"limit {MAX_PIXELS}: a decompression bomb?)", path)
        image.load()
    except InputImageError:
        raise
    except Image.DecompressionBombError as err:
        raise InputImageError(f"image too large to be a scan ({err})", path) from err
    except UnidentifiedImageError as err:
        raise InputImageError("not an image file Pillow can read", path) from err
    except PermissionError as err:
        raise InputImageError("permission denied", path) from err
    except MemoryError as err:
        raise InputImageError("out of memory while decoding", path) from err
    except Exception as err:  # Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, struct.error...
        raise InputImageError(f"corrupt or truncated image ({type(err).__name__}: {_short(err)})", path) from err
    return image


def load_rgb(path: str | Path) -> Image.Image:
    """The decoded scan as an 8-bit RGB Pillow image at its own size."""
    path = Path(path)
    return _rgb_or_error(open_pil(path), path)


def _rgb_or_error(image: Image.Image, path: Path) -> Image.Image:
    try:
        return pil_to_rgb(image)
    except (OSError, ValueError, SyntaxError) as err:  # e.g. a LAB TIFF, a broken EXIF block
        raise InputImageError(f"cannot convert this image to RGB ({_short(err)})", path) from err


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


def load_rgb_frames(path: str | Path, frames: str = "middle") -> list[Frame]:
    """The frames of a scan file to classify: one for ordinary images, the middle or all of a DICOM series."""
    path = Path(path)
    _check_file(path)
    if is_dicom_file(path):
        from tumor_edge.runtime.dicom import read_dicom_frames

        return [Frame(Image.fromarray(f.pixels).convert("RGB"), f.index, f.count)
                for f in read_dicom_frames(path, frames)]
    return [Frame(load_rgb(path))]


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""
