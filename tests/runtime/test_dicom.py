"""DICOM to 8-bit grey: window/level from the file, else min-max; MONOCHROME1; multi-frame; bad files.

Files are written with pydicom (real DICOM Part 10 files), then read back through the runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.models import write_dicom
from tumor_edge.errors import InputImageError
from tumor_edge.runtime.preprocess import load_rgb, load_rgb_frames
from tumor_edge.runtime.readers.dicom import read_dicom_frames

RAMP = np.arange(0, 4000, 4000 / (32 * 32)).reshape(32, 32).astype(np.uint16)


def read_dicom(path):
    """The file's middle frame, as classify takes it."""
    return read_dicom_frames(path)[0].pixels


def test_no_window_means_min_max(tmp_path):
    pixels = read_dicom(write_dicom(tmp_path / "a.dcm", RAMP))
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32)
    assert pixels.min() == 0 and pixels.max() == 255
    expected = np.clip((RAMP - RAMP.min()) * (255.0 / (RAMP.max() - RAMP.min())) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)


def test_window_from_the_file_is_applied(tmp_path):
    pixels = read_dicom(write_dicom(tmp_path / "w.dcm", RAMP, window=(1000, 500)))
    values = RAMP.astype(float)
    assert np.all(pixels[values <= 750 - 0.5] == 0)  # below the window: black
    assert np.all(pixels[values >= 1250] == 255)  # above: white
    inside = (values > 760) & (values < 1240)
    expected = np.clip(((values - 999.5) / 499 + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(pixels[inside], expected[inside])


def test_rescale_slope_intercept_come_before_the_window(tmp_path):
    # Stored 0..4000 with intercept -1000: the window (0, 400) in modality units covers stored 800..1200.
    pixels = read_dicom(write_dicom(tmp_path / "r.dcm", RAMP, window=(0, 400), rescale=(1, -1000)))
    values = RAMP.astype(float) - 1000
    assert np.all(pixels[values < -210] == 0) and np.all(pixels[values > 210] == 255)
    assert 0 < pixels[(values > -100) & (values < 100)].mean() < 255


def test_sigmoid_voi_function(tmp_path):
    pixels = read_dicom(write_dicom(tmp_path / "s.dcm", RAMP, window=(2000, 1000), voi_function="SIGMOID"))
    center = pixels[np.abs(RAMP.astype(float) - 2000) < 5]
    assert np.all(np.abs(center.astype(int) - 128) <= 2)


def test_monochrome1_is_inverted(tmp_path):
    normal = read_dicom(write_dicom(tmp_path / "m2.dcm", RAMP))
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_signed_pixels(tmp_path):
    signed = (RAMP.astype(np.int32) - 2000).astype(np.int16)
    pixels = read_dicom(write_dicom(tmp_path / "signed.dcm", signed))
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255


def test_multi_frame_middle_or_all(tmp_path):
    volume = np.stack([np.full((16, 16), 0, np.uint16) for _ in range(5)])
    for i in range(5):
        volume[i, :, : 3 * (i + 1)] = 1000  # frame i: a bright band whose width gives the frame away
    path = write_dicom(tmp_path / "vol.dcm", volume)
    middle = read_dicom_frames(path)
    assert [(f.index, f.count) for f in middle] == [(2, 5)]
    assert (middle[0].pixels[0] == 255).sum() == 9
    every = read_dicom_frames(path, "all")
    assert [f.index for f in every] == [0, 1, 2, 3, 4]
    assert [(f.pixels[0] == 255).sum() for f in every] == [3, 6, 9, 12, 15]
    assert np.array_equal(read_dicom_frames(path, 4)[0].pixels, every[4].pixels)
    frames = load_rgb_frames(path, "all")
    assert (frames[1].index, frames[1].count) == (1, 5) and frames[1].image.mode == "RGB"
    with pytest.raises(InputImageError, match="no frame 9"):
        read_dicom_frames(path, 9)


def test_dicom_without_preamble(tmp_path):
    pixels = read_dicom(write_dicom(tmp_path / "raw.dcm", RAMP, preamble=False))
    assert pixels.shape == (32, 32)


def test_dicom_goes_through_the_common_image_path(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RAMP)  # no suffix: found by the DICM magic
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", RAMP, pixel_data=False)
    with pytest.raises(InputImageError) as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "no pixel data" in str(info.value)


def test_corrupt_dicom(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage" * 5)
    with pytest.raises(InputImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_truncated_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", RAMP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputImageError) as info:
        read_dicom(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 20, bytes(range(256)) * 12])
def test_non_dicom_named_dcm(tmp_path, content):
    path = tmp_path / "fake.dcm"
    path.write_bytes(content)
    with pytest.raises(InputImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(str(path)) and ("not a DICOM file" in message or "unreadable DICOM" in message)
