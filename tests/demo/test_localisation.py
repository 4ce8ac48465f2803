"""The demo's localisation stage on real demo data with lesion masks and a real (tiny, TensorFlow-free) ONNX bundle:
every held-out tumour scan is explained by each method, scored against its own lesion, and reported with the
chance and brightest-pixel baselines; the summary section says which method drew each row."""

from __future__ import annotations

import pytest

from tests.runtime.models import make_bundle
from tumor_edge.demo.anatomy import builtin_volumes
from tumor_edge.demo.generate import DemoDataConfig, generate
from tumor_edge.demo.localisation import LocalisationConfig, localisation_markdown, measure_localisation

mni = next((v for v in builtin_volumes() if v.name == "mni152"), None)
pytestmark = pytest.mark.skipif(mni is None, reason="nilearn's MNI152 template is not installed")


def test_every_held_out_tumour_scan_is_scored_per_file_method_and_class(tmp_path):
    data = tmp_path / "data"
    generate(DemoDataConfig(data, per_class=4, size=48, seed=2, volumes=(mni.path,), builtin=False,
                            show_progress=False))
    bundle = make_bundle(tmp_path / "bundle")
    result = measure_localisation(tmp_path / "no-run", bundle, data, LocalisationConfig(per_class=2, grid=4,
                                                                                       masks=16))
    assert result["scans"] == 3  # 4 per class -> 1 held out; notumor has no lesion
    rows = result["files"]
    assert set(rows) == {"onnx fp32, occlusion 4x4", "onnx fp32, RISE 32x32", "no model: brightest pixel"}
    for row in rows.values():
        figures = row["figures"]
        assert set(figures) == {"glioma", "meningioma", "pituitary", "all"} and figures["all"]["n"] == 3
        assert 0 <= figures["all"]["pointing"] <= 1 and 0 <= figures["all"]["energy"] <= 1
        assert 0 < figures["all"]["chance"] < 1
    assert result["tolerance_px"] == 1.6  # 5 % of 32 px
    text = localisation_markdown(result)
    assert "| onnx fp32 | occlusion 4x4 |" in text and "| onnx fp32 | RISE 32x32 |" in text
    assert "brightest pixel" in text and "within 1.6 px" in text
    assert result["excluded"] == 0 and "excluded" not in text
    tiny = {**result, "excluded": 2, "scans": 5}
    assert "2 lesion(s) with no pixel left at 32 px are excluded" in localisation_markdown(tiny)


def test_data_without_masks_is_said_not_measured(tmp_path):
    data = tmp_path / "data"
    generate(DemoDataConfig(data, per_class=2, size=48, seed=2, volumes=(mni.path,), builtin=False,
                            show_progress=False))
    import shutil

    shutil.rmtree(data / "masks")
    result = measure_localisation(tmp_path / "no-run", make_bundle(tmp_path / "bundle"), data)
    assert "skipped" in result and "Not measured" in localisation_markdown(result)


def test_a_relative_data_root_is_measured(tmp_path, monkeypatch):
    """The README's demo runs in a relative work dir: its held-out tumour scans are found with their masks and
    measured, not reported as data without masks."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    data = Path("demo-workdir") / "demo-data"
    generate(DemoDataConfig(data, per_class=4, size=48, seed=2, volumes=(mni.path,), builtin=False,
                            show_progress=False))
    assert not data.is_absolute()
    result = measure_localisation(Path("demo-workdir") / "run", make_bundle(Path("bundle")), data,
                                  LocalisationConfig(per_class=1, grid=4, masks=8, methods=("auto",)))
    assert "skipped" not in result and result["scans"] == 3
    assert "Not measured" not in localisation_markdown(result)
