"""Decoding real files of every supported kind to 8-bit RGB, and one-line errors for every kind of bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.runtime.models import png_bomb, quadrant_image, write_dicom
from tumor_edge.errors import InputImageError
from tumor_edge.runtime.preprocess import (
    Preprocessing,
    is_scan_file,
    load_resized,
    load_rgb,
    load_rgb_frames,
    scan_inputs,
)
from tumor_edge.runtime.readers import is_dicom_file


def _rgb(path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("suffix,args", [(".jpg", {"quality": 95}), (".png", {}), (".bmp", {}), (".tif", {}),
                                         (".tiff", {"compression": "tiff_lzw"})])
def test_common_formats_decode_to_the_same_rgb(tmp_path, suffix, args):
    source = quadrant_image(1, 48)
    path = tmp_path / f"scan{suffix}"
    Image.fromarray(source).save(path, **args)
    pixels = _rgb(path)
    assert pixels.shape == (48, 48, 3)
    tolerance = 12 if suffix == ".jpg" else 0
    assert np.abs(pixels.astype(int) - source.astype(int)).max() <= tolerance


def test_grey_png_becomes_three_equal_channels(tmp_path):
    grey = quadrant_image(2, 40, grey=False)
    Image.fromarray(grey).save(tmp_path / "g.png")
    pixels = _rgb(tmp_path / "g.png")
    assert np.array_equal(pixels[..., 0], grey) and np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_min_max_scaled(tmp_path, suffix):
    values = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = _rgb(path)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[..., 0].ravel().astype(int)) >= 0)  # order preserved


def test_rgba_transparent_areas_become_black(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top opaque, bottom fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    pixels = _rgb(tmp_path / "a.png")
    assert pixels[:10].min() == 200 and pixels[10:].max() == 0


def test_palette_png_with_and_without_transparency(tmp_path):
    grey = Image.fromarray(quadrant_image(3, 32, grey=False))
    grey.convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _rgb(tmp_path / "p.png").shape == (32, 32, 3)
    pal = grey.convert("P")
    pal.save(tmp_path / "pt.png", transparency=int(np.asarray(pal)[0, 0]))
    pixels = _rgb(tmp_path / "pt.png")
    assert pixels[0, 0].max() == 0  # the transparent colour became black


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    pixels = _rgb(tmp_path / "rot.jpg")
    assert pixels.shape == (40, 20, 3)  # displayed portrait
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # the white half is now on top


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(quadrant_image(0, 32)).convert("CMYK").save(tmp_path / "c.jpg")
    assert _rgb(tmp_path / "c.jpg").shape == (32, 32, 3)


def test_resize_to_model_size(tmp_path):
    Image.fromarray(quadrant_image(0, 100)).save(tmp_path / "s.png")
    out = load_resized(tmp_path / "s.png", Preprocessing(32, 48))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


# ---- bad files: one line naming the file and the problem ------------------------------------------------


def _error(path) -> str:
    with pytest.raises(InputImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty file" in _error(tmp_path / "empty.jpg")


def test_folder_is_not_an_image(tmp_path):
    assert "folder" in _error(tmp_path)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("patient notes, not an image\n" * 20)
    assert "not an image file" in _error(tmp_path / "notes.jpg")


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_image(tmp_path, fmt, suffix):
    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(0, 128)).save(buffer, fmt)
    (tmp_path / f"cut{suffix}").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert "truncated" in _error(tmp_path / f"cut{suffix}")


def test_corrupt_bytes_after_a_valid_header(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(0, 64)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[60:200] = b"\xff" * 140  # IDAT garbage with the signature intact
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert "corrupt" in _error(tmp_path / "bad.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")  # 400 Mpx claimed: Pillow's own guard raises
    assert "too large to be a scan" in _error(bomb)
    medium = png_bomb(tmp_path / "medium.png", 9_000, 9_000)  # 81 Mpx: over our limit, under Pillow's error
    assert "too large to be a scan" in _error(medium)


# ---- what counts as a scan when walking folders -------------------------------------------------------------


def test_suffixless_dicom_is_detected_and_walked(tmp_path):
    write_dicom(tmp_path / "series" / "IM0001", np.full((8, 8), 100, np.uint16))
    (tmp_path / "series" / "README").write_text("not a scan")
    (tmp_path / "series" / ".hidden.jpg").write_bytes(b"x")
    Image.fromarray(quadrant_image(0, 16)).save(tmp_path / "series" / "b.png")
    assert is_dicom_file(tmp_path / "series" / "IM0001")
    assert not is_scan_file(tmp_path / "series" / "README")
    found = scan_inputs([tmp_path]).files
    assert [p.name for p in found] == ["IM0001", "b.png"]
    assert scan_inputs([tmp_path / "missing.jpg"]).files == [tmp_path / "missing.jpg"]  # kept, reported later


def test_single_image_has_one_frame(tmp_path):
    Image.fromarray(quadrant_image(0, 16)).save(tmp_path / "a.png")
    frames = load_rgb_frames(tmp_path / "a.png", "all")
    assert len(frames) == 1 and (frames[0].index, frames[0].count) == (0, 1)


# ---- property-based: any bytes under any scan name decode or fail in one line, never otherwise -------------


def _samples() -> dict[str, bytes]:
    """Small valid files of each kind, to mutate (random bytes alone rarely get past the magic numbers)."""
    out = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        buffer = io.BytesIO()
        Image.fromarray(quadrant_image(1, 8)).save(buffer, fmt)
        out[suffix] = buffer.getvalue()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        frames = np.stack([quadrant_image(q, 8, grey=False).astype(np.uint16) for q in (0, 1)])
        out[".dcm"] = write_dicom(Path(folder) / "a.dcm", frames, window=(100, 200)).read_bytes()
    return out


SAMPLES = _samples()
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".gif": b"GIF89a", ".tif": b"II*\x00",
         ".dcm": b"\x00" * 128 + b"DICM", "": b"\x00" * 128 + b"DICM"}


def _decode_or_clean_error(data: bytes, suffix: str) -> None:
    import tempfile

    from tests.runtime.hostile import within

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"scan{suffix}"
        path.write_bytes(data)
        try:
            frames = within(20, load_rgb_frames, path, "all")  # never a hang
        except InputImageError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            return
        assert frames and all(f.image.mode == "RGB" and min(f.image.size) > 0 for f in frames)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=60, deadline=None)
@given(suffix=st.sampled_from(sorted(MAGIC)), magic=st.booleans(), body=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_fail_in_one_line(suffix, magic, body):
    _decode_or_clean_error((MAGIC[suffix] if magic else b"") + body, suffix)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=80, deadline=None)
@given(suffix=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_mutated_images_decode_or_fail_in_one_line(suffix, data):
    sample = bytearray(SAMPLES[suffix])
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        position = data.draw(st.integers(0, len(sample) - 1), label="position")
        sample[position] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(1, len(sample)), label="length")
    _decode_or_clean_error(bytes(sample[:cut]), suffix)


def test_an_input_type_is_one_registered_reader(tmp_path, bundle, monkeypatch):
    """A new 2-D input type is one `Reader` in the registry: walking, decoding and classifying all pick it up."""
    import tumor_edge.runtime.readers as registry
    from tumor_edge.runtime import Classifier, preprocess
    from tumor_edge.runtime.readers import Picture, Reader, Scan

    def read_raw(path, options):  # a made-up format: 2 bytes of side length, then grey pixels
        data = path.read_bytes()
        side = int.from_bytes(data[:2], "little")
        grey = np.frombuffer(data[2:2 + side * side], np.uint8).reshape(side, side)
        return Scan(str(path), "raw", "image", [Picture(Image.fromarray(grey).convert("RGB"))])

    scan = quadrant_image(3)[..., 0]
    path = tmp_path / "scans" / "a.raw"
    path.parent.mkdir()
    path.write_bytes(len(scan).to_bytes(2, "little") + scan.tobytes())
    assert not preprocess.is_scan_file(path)
    with monkeypatch.context() as patch:
        patch.setattr(registry, "READERS", [*registry.READERS, Reader("raw", (".raw",), read_raw)])
        assert preprocess.is_scan_file(path) and preprocess.scan_inputs([path.parent]).files == [path]
        assert np.array_equal(np.asarray(load_rgb(path))[..., 0], scan)
        [result] = Classifier.from_bundle(bundle).iter_predictions([path])
        assert result.ok and result.label == "pituitary"
    assert not preprocess.is_scan_file(path)
