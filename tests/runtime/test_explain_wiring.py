"""`classify --heatmap` and serve draw maps for any model: a model without a class-activation head (a foreign ONNX
file) gets an occlusion map per scan and per volume slice, and the JSON, the PNG and the page say which method
drew it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.runtime.heatmap_models import make_heatmap_bundle
from tests.runtime.models import quadrant_image, save_quadrant
from tumor_edge.cli import main
from tumor_edge.runtime.classifier import Classifier


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _hottest_quadrant(png, size: int = 32) -> int:
    """The quadrant of the reddest pixel of an overlay of a `size` px scan (centred above its caption)."""
    picture = np.asarray(Image.open(png).convert("RGB")).astype(int)
    left = (picture.shape[1] - size) // 2
    red = picture[:size, left:left + size, 0] - picture[:size, left:left + size, 2]
    r, c = np.unravel_index(np.argmax(red), red.shape)
    return 2 * int(r >= size // 2) + int(c >= size // 2)


def test_a_model_without_a_cam_head_gets_an_occlusion_map_per_scan(bundle, tmp_path, state):
    scans = [save_quadrant(tmp_path / "scans" / f"q{q}.png", q) for q in range(4)]
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--heatmap", str(tmp_path / "maps"),
                                       "--heatmap-grid", "4", *map(str, scans)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["heatmap_method"] for row in rows] == ["occlusion 4x4"] * 4
    for q, row in enumerate(rows):
        with Image.open(row["heatmap_png"]) as png:
            assert png.text["Method"] == "occlusion 4x4"
        assert _hottest_quadrant(row["heatmap_png"]) == q


def test_the_cam_is_kept_where_it_has_cells_and_the_method_is_said(tmp_path, state):
    bundle = make_heatmap_bundle(tmp_path / "hb")
    scan = save_quadrant(tmp_path / "scans" / "q2.png", 2)
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--heatmap", str(tmp_path / "maps"),
                                       str(scan)])
    assert result.exit_code == 0, result.output
    row = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert row["heatmap_method"] == "exact CAM 32x32"


def test_serve_gives_the_exact_cam_unasked_without_decoding_again(tmp_path, monkeypatch):
    """The CAM comes with the prediction: serve includes it whether or not the request asked for a map, and reads
    it from the outputs (the upload is not decoded a second time)."""
    import tumor_edge.runtime as runtime
    from tumor_edge.serve.inference import classify_bytes

    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(2, 32)).save(buffer, format="PNG")
    classifier = Classifier.from_bundle(make_heatmap_bundle(tmp_path / "hb"))
    decodes = []
    real = runtime.decode_file  # what serve's map code decodes an upload again with (the stream has its own)
    monkeypatch.setattr(runtime, "decode_file", lambda *a, **k: decodes.append(a) or real(*a, **k))
    for asked in (False, True):
        item = classify_bytes(classifier, buffer.getvalue(), "q2.png", heatmap=asked).results[0]
        assert item["heatmap_method"] == "exact CAM 32x32" and np.shape(item["heatmap"]) == (32, 32)
    assert decodes == []


def test_explain_without_pixels_is_only_for_the_exact_cam(bundle):
    from tumor_edge.errors import ConfigError
    from tumor_edge.runtime.explain import explain_prediction as explain

    with pytest.raises(ConfigError, match="needs the scan's pixels"):
        explain(Classifier.from_bundle(bundle), None, 0)


def test_volume_slices_get_maps_too(bundle, tmp_path, state):
    pytest.importorskip("nibabel")
    from tests.runtime.volume_files import head, write_nifti

    volume = write_nifti(tmp_path / "head.nii.gz", head())
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--slices", "3", "--heatmap",
                                       str(tmp_path / "maps"), str(volume)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    slices = [row for row in rows if "heatmap_png" in row]
    assert len(slices) == 3 and all(row["heatmap_method"] == "occlusion 8x8" for row in slices)
    assert len(list((tmp_path / "maps").glob("*_heatmap.png"))) == 3


def test_serve_gives_the_page_a_map_and_its_method_for_any_model(bundle):
    """The page asks for a map (`?heatmap=1`); an API client that does not ask gets none from a model without a
    class-activation map (occlusion costs ~65 inferences)."""
    from tumor_edge.serve.inference import classify_bytes

    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(3)).save(buffer, format="PNG")
    classifier = Classifier.from_bundle(bundle)
    unasked = classify_bytes(classifier, buffer.getvalue(), "q3.png").results[0]
    assert "heatmap" not in unasked and "heatmap_method" not in unasked
    item = classify_bytes(classifier, buffer.getvalue(), "q3.png", heatmap=True).results[0]
    assert item["heatmap_method"] == "occlusion 8x8"
    cells = np.asarray(item["heatmap"])
    row, col = np.unravel_index(np.argmax(cells), cells.shape)
    assert cells.shape == (8, 8) and row >= 4 and col >= 4  # bottom-right: pituitary's quadrant


def test_a_vgg_like_foreign_onnx_model_gets_a_map_per_scan(tmp_path, state):
    """A foreign ONNX file (NCHW, batch fixed at 1, flatten + dense head, no CAM) gets an
    overlay per scan, pointing at the quadrant its class reads."""
    from tests.runtime.explain_models import vgg_like_foreign_bundle

    bundle = vgg_like_foreign_bundle(tmp_path / "vgg", size=16, quadrant=3)
    scans = [save_quadrant(tmp_path / "scans" / f"s{i}.png", 3) for i in range(3)]
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--heatmap", str(tmp_path / "maps"),
                                       "--heatmap-grid", "4", *map(str, scans)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(row["label"] == "pituitary" for row in rows)
    for row in rows:
        assert row["heatmap_method"] == "occlusion 4x4"
        assert _hottest_quadrant(row["heatmap_png"], size=16) == 3
