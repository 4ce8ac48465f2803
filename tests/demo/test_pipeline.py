"""`tumor-edge demo` end to end with a tiny profile: real generation, training, export, runtime, bench; resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tumor_edge.cli import main
from tumor_edge.demo import pipeline
from tumor_edge.demo.pipeline import STAGE_DIR, STAGES, DemoConfig, DemoProfile, run_demo
from tumor_edge.errors import OutputExistsError

pytestmark = pytest.mark.slow

TINY = DemoProfile("tiny", per_class=12, data_size=64, image_size=75, epochs=1, batch_size=16, bn_momentum=0.8,
                   learning_rate=1e-3, bench_seconds=0.2)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """One real demo run with the tiny profile (a registry entry, as a user-facing profile would be)."""
    workdir = tmp_path_factory.mktemp("demo") / "wd"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pipeline.PROFILES, "tiny", TINY)
        mp.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        ctx = run_demo(DemoConfig(workdir=workdir, profile="tiny", show_progress=False))
    return workdir, ctx


def test_every_stage_leaves_its_artefacts_and_a_marker(tiny_demo):
    workdir, ctx = tiny_demo
    assert (workdir / "data" / "DATASET.md").is_file()
    assert (workdir / "run" / "model.keras").is_file() and (workdir / "run" / "metrics.json").is_file()
    bundle = workdir / "bundle"
    assert (bundle / "metadata.json").is_file()
    assert {"model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite", "parity.md"} <= {
        p.name for p in bundle.iterdir()}
    for stage in STAGES:
        marker = json.loads((workdir / STAGE_DIR / f"{stage.name}.json").read_text())
        assert marker["params"]["profile"]["name"] == "tiny" and marker["seconds"] >= 0
    classified = json.loads((workdir / "classify.json").read_text())
    assert len(classified) == 8 and {r["true"] for r in classified} == {"glioma", "meningioma", "notumor",
                                                                         "pituitary"}
    assert all(r["file"].startswith("Testing/") for r in classified)


def test_summary_reports_the_measured_figures_and_says_synthetic(tiny_demo):
    workdir, ctx = tiny_demo
    text = (workdir / "SUMMARY.md").read_text()
    metrics = json.loads((workdir / "run" / "metrics.json").read_text())
    assert "SYNTHETIC" in text and "tumor-edge train PATH" in text and "not a diagnostic device" in text
    assert f"accuracy {100 * metrics['accuracy']:.1f} %" in text
    assert f"{metrics['macro_auc']:.3f}" in text
    assert "model_int8.onnx" in text  # the parity table
    latency = ctx.results["bench"]["latency"]
    assert latency and all(v["p50_ms"] > 0 for v in latency.values())
    assert any("onnx" in k for k in latency) and all(k in text for k in latency)
    assert str(workdir / "bundle") in text and "held-out" in text.lower()


def test_rerun_reuses_complete_stages_and_redoes_invalidated_ones(tiny_demo):
    workdir, _ = tiny_demo
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pipeline.PROFILES, "tiny", TINY)
        start = time.perf_counter()
        again = run_demo(DemoConfig(workdir=workdir, profile="tiny", show_progress=False))
        assert again.skipped == [s.name for s in STAGES]
        assert time.perf_counter() - start < 60
        # An interrupted run: the classify marker never got written. Classify and bench run again, the rest not.
        (workdir / STAGE_DIR / "classify.json").unlink()
        resumed = run_demo(DemoConfig(workdir=workdir, profile="tiny", show_progress=False))
        assert resumed.skipped == ["data", "train", "export"]
        assert (workdir / STAGE_DIR / "classify.json").is_file()


def test_refuses_a_workdir_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--workdir"):
        run_demo(DemoConfig(workdir=tmp_path, profile="cpu", show_progress=False))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path), "--profile", "cpu"])
    assert result.exit_code != 0 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_says_synthetic_and_points_to_train():
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "SYNTHETIC" in result.output and "tumor-edge train PATH" in result.output


def test_workdir_default_is_relative(tmp_path):
    assert DemoConfig().workdir == Path("demo-workdir")


def test_summary_carries_the_trust_section_with_a_heatmap_per_class(tiny_demo):
    """The demo summary shows calibration, one heatmap per class (PNG) and the OOD figures."""
    workdir, ctx = tiny_demo
    text = (workdir / "SUMMARY.md").read_text()
    assert "## Trust: how far to believe each prediction" in text
    assert "### Calibration" in text and "### Out-of-distribution warnings" in text
    assert (workdir / "trust" / "ood.png").is_file()
    figures = ctx.results["trust"]["figures"]
    heatmaps = figures.get("heatmaps", {})
    assert set(heatmaps) == {"glioma", "meningioma", "notumor", "pituitary"}  # a row per class, drawn or why not
    drawn = [v for v in heatmaps.values() if v]
    for entry in drawn:  # every map drawn is a PNG linked from the summary
        assert (workdir / "trust" / entry["png"]).is_file() and entry["png"] in text


def test_summary_says_where_the_maps_point_per_file_and_never_shows_a_one_cell_map(tiny_demo):
    """Pointing game and energy in the lesion per file and class; overlays drawn by a method that points."""
    workdir, ctx = tiny_demo
    text = (workdir / "SUMMARY.md").read_text()
    assert "## Do the maps point at the lesion?" in text and "brightest pixel" in text
    result = json.loads((workdir / "localisation.json").read_text())
    rows = {row["file"] for row in result["files"].values() if row.get("file")}
    assert {"keras", "onnx fp32", "onnx int8"} <= rows
    for row in result["files"].values():
        if "figures" in row:
            assert row["figures"]["all"]["n"] == result["scans"] > 0
    for entry in ctx.results["trust"]["figures"]["heatmaps"].values():
        if entry:  # the 75 px model's CAM is one cell: the overlay is drawn by occlusion and says so
            assert entry["method"] == "occlusion 8x8" and entry["method"] in text
