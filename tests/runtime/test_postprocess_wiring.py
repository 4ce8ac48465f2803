"""The runtime applies a bundle's calibration and OOD fields: temperature-scaled probabilities, warnings for scans
that are not what the model knows, and a clear refusal of --heatmap for a model without a heatmap output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.runtime.models import make_bundle, quadrant_image, save_quadrant
from tumor_edge.calibration import apply_temperature
from tumor_edge.cli import main
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.errors import ModelError
from tumor_edge.runtime.classifier import Classifier


def _with_fields(bundle, **fields):
    meta = json.loads((bundle / "metadata.json").read_text())
    meta.update(fields)
    (bundle / "metadata.json").write_text(json.dumps(meta))
    return bundle


def test_temperature_from_the_bundle_scales_probabilities(fresh_bundle, tmp_path):
    images = [quadrant_image(q) for q in range(4)]
    raw = Classifier.from_bundle(fresh_bundle).predict_batch(images)
    calibrated = Classifier.from_bundle(_with_fields(fresh_bundle, calibration={"temperature": 2.5}))
    for before, after in zip(raw, calibrated.predict_batch(images)):
        expected = apply_temperature(np.array([list(before.probabilities.values())], np.float32), 2.5)[0]
        np.testing.assert_allclose(list(after.probabilities.values()), expected, rtol=1e-5)
        assert after.label == before.label
    assert BundleMetadata.read(fresh_bundle).calibration == {"temperature": 2.5}


@pytest.mark.parametrize("fields, match", [({"calibration": {"temperature": -1}}, "calibration.temperature"),
                                           ({"ood": {"score": "mahalanobis", "centres": "x", "threshold": 1}},
                                            "ood.centres"),
                                           ({"calibration": [1]}, "'calibration' must be an object")])
def test_malformed_calibration_or_ood_fields_are_one_line_model_errors(fresh_bundle, fields, match):
    with pytest.raises(ModelError, match=match):
        Classifier.from_bundle(_with_fields(fresh_bundle, **fields))


def test_scans_that_are_not_mri_slices_get_warnings(bundle):
    clf = Classifier.from_bundle(bundle)
    blank, noise = np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (64, 64, 3))
    ok, flat, noisy = clf.predict_batch([quadrant_image(1), blank, noise.astype(np.uint8)])
    assert ok.warnings == () and "warnings" not in ok.to_dict()
    assert flat.warnings[0].startswith("blank") and noisy.warnings[0].startswith("looks like noise")
    assert flat.to_dict()["warnings"] == list(flat.warnings)


def test_table_prints_warnings_and_the_cam_method_needs_a_heatmap_output(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    blank = save_quadrant(tmp_path / "scans" / "a.png", 0)
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "scans" / "blank.png")
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), str(blank.parent)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "blank.png" in line)
    assert row.endswith("]") and "  [warning: blank or constant image" in row
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--heatmap", str(tmp_path / "maps"),
                                       "--heatmap-method", "cam", str(blank)])
    assert result.exit_code != 0 and "has no class-activation map output" in result.output
    assert not (tmp_path / "maps").exists()  # (without --heatmap-method cam it draws an occlusion map)


def test_bundles_without_calibration_or_ood_fields_load(tmp_path):
    clf = Classifier.from_bundle(make_bundle(tmp_path / "old"))
    assert clf.postprocessing.temperature is None and not clf.postprocessing.has_ood


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_abstain_gives_no_label_to_a_warned_scan(bundle, tmp_path, monkeypatch, fmt):
    from PIL import Image

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    good = save_quadrant(tmp_path / "scans" / "a.png", 0)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "scans" / "blank.png")
    flags = {"table": [], "json": ["--json"], "csv": ["--csv"]}[fmt]
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--abstain", *flags, str(good.parent)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "blank.png" in line or "a.png" in line]
    if fmt == "json":
        rows = {json.loads(line)["file"].rsplit("/", 1)[-1]: json.loads(line) for line in lines}
        assert rows["blank.png"]["label"] is None and rows["blank.png"]["abstained"] is True
        assert rows["blank.png"]["warnings"] and rows["a.png"]["label"] == "glioma"
    elif fmt == "csv":
        blank = next(line for line in lines if "blank.png" in line).split(",")
        assert blank[2] == "" and blank[3] == ""
    else:
        blank = next(line for line in lines if "blank.png" in line).split()
        assert blank[1] == "-" and blank[2] == "-"


def test_classify_heatmap_writes_overlays_and_json_says_where(tmp_path, monkeypatch):
    from PIL import Image

    from tests.runtime.heatmap_models import make_heatmap_bundle

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    bundle = make_heatmap_bundle(tmp_path / "hb")
    scans = [save_quadrant(tmp_path / "scans" / f"q{q}.png", q) for q in range(4)]
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--heatmap", str(tmp_path / "maps"),
                                       *map(str, scans)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    for q, row in enumerate(rows):
        png = tmp_path / "maps" / f"{q:05d}_q{q}_heatmap.png"
        assert row["heatmap_png"] == str(png) and png.is_file()
        picture = np.asarray(Image.open(png).convert("RGB")).astype(int)
        left = (picture.shape[1] - 32) // 2
        red = picture[:32, left:left + 32, 0] - picture[:32, left:left + 32, 2]
        r, c = np.unravel_index(np.argmax(red), red.shape)
        assert (r >= 16, c >= 16) == (q >= 2, q % 2 == 1), (q, r, c)  # hottest in the class's own quadrant
    again = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--heatmap", str(tmp_path / "maps"),
                                      str(scans[0])])
    assert again.exit_code != 0 and "--force" in again.output
    forced = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--heatmap", str(tmp_path / "maps"),
                                       "--force", str(scans[0])])
    assert forced.exit_code == 0 and len(list((tmp_path / "maps").iterdir())) == 1


def test_serve_result_carries_the_predicted_class_map_and_warnings(tmp_path):
    """What the web page draws: `heatmap` as the predicted class's 2-D map; `warnings` as given."""
    import io

    from PIL import Image

    from tests.runtime.heatmap_models import make_heatmap_bundle
    from tumor_edge.serve.inference import classify_bytes

    clf = Classifier.from_bundle(make_heatmap_bundle(tmp_path / "hb"))
    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(3)).save(buffer, format="PNG")
    item = classify_bytes(clf, buffer.getvalue(), "scan.png").results[0]
    heatmap = np.array(item["heatmap"])
    assert item["label"] == "pituitary" and heatmap.shape == (32, 32)
    assert heatmap[16:, 16:].mean() > heatmap[:16, :16].mean()
    blank = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(blank, format="PNG")
    assert classify_bytes(clf, blank.getvalue(), "blank.png").results[0]["warnings"][0].startswith("blank")
