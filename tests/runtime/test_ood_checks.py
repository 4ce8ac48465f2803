"""Input checks on decoded pixels, through the runtime's own decoding at a model's input size: a real colour
photograph, noise, blank and constant images are flagged; real and synthetic brain MRI slices are not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.toydata import CLASSES, toy_image
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.runtime.classifier import decode_file
from tumor_edge.runtime.postprocess import input_warnings, pixel_stats

SPEC = Preprocessing(96, 96)


def model_pixels(path: Path) -> np.ndarray:
    decoded = decode_file(path, SPEC)
    assert decoded.failure is None, decoded.failure
    return decoded.pixels[0][0]


def sample_data() -> Path:
    matplotlib = pytest.importorskip("matplotlib")
    return Path(matplotlib.get_data_path()) / "sample_data"


def save(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


def test_colour_photograph_is_flagged(tmp_path):
    """matplotlib's sample photograph (Grace Hopper, a real colour JPEG)."""
    reasons = input_warnings(model_pixels(sample_data() / "grace_hopper.jpg"))
    assert len(reasons) == 1 and reasons[0].startswith("colour image")


@pytest.mark.parametrize("kind", ["rgb_uniform", "grey_uniform", "gaussian", "grey_gaussian_large"])
def test_noise_is_flagged(tmp_path, kind):
    rng = np.random.default_rng(0)
    noise = {"rgb_uniform": lambda: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
             "grey_uniform": lambda: rng.integers(0, 256, (96, 96), dtype=np.uint8),
             "gaussian": lambda: np.clip(rng.normal(128, 40, (120, 80, 3)), 0, 255).astype(np.uint8),
             "grey_gaussian_large": lambda: np.clip(rng.normal(100, 30, (512, 512)), 0, 255).astype(np.uint8)}[kind]()
    assert any(r.startswith("looks like noise") for r in input_warnings(noise)), "at its own resolution"
    reasons = input_warnings(model_pixels(save(tmp_path, f"{kind}.png", noise)))
    # Downsized to the model's input, a large noise image averages to a near-flat grey: still flagged, as blank
    # (measured: 512 px Gaussian noise leaves 3.7 grey levels of contrast at 96 px).
    assert any(r.startswith(("looks like noise", "blank")) for r in reasons), reasons


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_and_constant_images_are_flagged(tmp_path, value):
    reasons = input_warnings(model_pixels(save(tmp_path, "flat.png", np.full((64, 80), value, np.uint8))))
    assert reasons and reasons[0].startswith("blank or constant")


def test_frame_filling_image_without_background_is_flagged():
    """A bright, smooth image that fills the frame (as a chest film or a document scan does)."""
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    film = (140 + 50 * np.sin(xx / 9) * np.cos(yy / 13)).astype(np.uint8)
    reasons = input_warnings(np.repeat(film[..., None], 3, -1))
    assert len(reasons) == 1 and reasons[0].startswith("no dark background")


def test_real_mri_slice_passes(tmp_path):
    """matplotlib's sample MRI slice (s1045.ima: 256 x 256, 16-bit), written as a 16-bit PNG and decoded by the
    runtime as any scan would be."""
    with gzip.open(sample_data() / "s1045.ima.gz") as fh:
        raw = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    path = tmp_path / "s1045.png"
    Image.fromarray(raw.astype(np.uint16)).save(path)
    assert input_warnings(model_pixels(path)) == []


def test_toy_scans_pass():
    rng = np.random.default_rng(0)
    for label in CLASSES:
        for _ in range(5):
            assert input_warnings(np.repeat(toy_image(label, 80, rng)[..., None], 3, -1)) == [], label


def test_demo_scans_pass(demo_dataset):
    """Every synthetic demo scan (real MRI template anatomy, simulated lesions) is unflagged: measured over the
    whole small demo set, not sampled."""
    files = sorted(p for p in demo_dataset.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(files) >= 16
    flagged = {p.name: input_warnings(model_pixels(p)) for p in files}
    assert not {k: v for k, v in flagged.items() if v}


def test_stats_of_a_grey_image_have_no_colour():
    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None], 3, -1)
    stats = pixel_stats(grey)
    assert stats.colour == 0.0 and stats.neighbour_correlation > 0.9
