"""The constant-picture check answers exactly as a full scan of every pixel does, probes or not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tumor_edge.runtime.pixels import band_values_if_constant


def _full_scan(image: Image.Image) -> tuple | None:
    """The definition: every band's minimum equals its maximum."""
    array = np.asarray(image).reshape(image.size[1], image.size[0], -1)
    lo, hi = array.min(axis=(0, 1)), array.max(axis=(0, 1))
    return tuple(int(v) for v in lo) if np.array_equal(lo, hi) else None


@pytest.mark.parametrize("mode,value", [("RGB", (77, 77, 77)), ("RGB", (10, 20, 30)), ("L", 0), ("L", 255)])
def test_a_constant_picture_gives_its_band_values(mode, value):
    image = Image.new(mode, (31, 17), value)
    expected = value if isinstance(value, tuple) else (value,)
    assert band_values_if_constant(image) == expected


@pytest.mark.parametrize("x,y", [(1, 1), (15, 8), (30, 16), (29, 15)])
def test_one_different_pixel_off_the_probe_lattice_is_still_found(x, y):
    """A pixel no probe reads (the lattice of a 31x17 picture is x in {0,7,15,22,30}, y in {0,4,8,12,16}) and
    pixels it does read: either way the answer is 'not constant'."""
    image = Image.new("RGB", (31, 17), (40, 40, 40))
    image.putpixel((x, y), (40, 41, 40))
    assert band_values_if_constant(image) is None


def test_a_one_pixel_picture_is_constant():
    assert band_values_if_constant(Image.new("RGB", (1, 1), (5, 6, 7))) == (5, 6, 7)


def test_a_float_picture_falls_back_to_the_full_scan():
    image = Image.fromarray(np.full((9, 9), 2.5, dtype=np.float32))
    assert band_values_if_constant(image) == (2.5,)
    image.putpixel((3, 3), 3.0)
    assert band_values_if_constant(image) is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 3), st.data())
def test_agrees_with_a_full_scan(width, height, spread, data):
    """Random small pictures whose pixels mostly agree (spread 0: all equal), in RGB and grey."""
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256 - spread, 3)
    pixels = (base + rng.integers(0, spread + 1, (height, width, 3)) * (rng.random((height, width, 1)) < 0.1))
    rgb = Image.fromarray(pixels.astype(np.uint8), "RGB")
    assert band_values_if_constant(rgb) == _full_scan(rgb)
    grey = rgb.getchannel(0)
    assert band_values_if_constant(grey) == _full_scan(grey)
