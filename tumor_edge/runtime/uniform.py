"""Whether a decoded picture is one constant colour, without scanning it in the common case.

Every decoded scan is checked for being constant (its label would mean nothing). Pillow's `getextrema` on an RGB
image copies each band out and scans it: 0.53 ms CPU a 512x512 scan (AMD Zen 5), a fifth of decoding and resizing
it for a 96 px model. Real scans differ between their first pixel and the centre or a corner, which a handful of
`getpixel` calls finds in microseconds; only a picture whose probes all agree is scanned in full. The answer is
exactly the full scan's: a probe that differs proves the picture is not constant, and a full scan decides the rest.
"""

from __future__ import annotations

from PIL import Image

# Modes whose pixel values compare exactly (floats do not: NaN != NaN), so a differing probe proves non-constancy.
_EXACT_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA",
                          "RGBa", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_GRID = 4  # probes on a (GRID+1) x (GRID+1) lattice over the picture, corners and centre included


def band_values_if_constant(image: Image.Image) -> tuple[float, ...] | None:
    """Each band's single value when every pixel of `image` is the same, else None (as `getextrema` decides)."""
    width, height = image.size
    if image.mode in _EXACT_MODES and width > 0 and height > 0:
        first = image.getpixel((0, 0))
        for j in range(_GRID + 1):
            y = (height - 1) * j // _GRID
            for i in range(_GRID + 1):
                if image.getpixel(((width - 1) * i // _GRID, y)) != first:
                    return None
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(lo == hi for lo, hi in bands):
        return tuple(lo for lo, _ in bands)
    return None
