"""The demo summary's trust section (tumor_edge.demo.trust_summary): calibration, a heatmap per class, OOD rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.runtime.models import CLASSES, save_quadrant
from tumor_edge import RESEARCH_NOTICE
from tumor_edge.calibration import calibration_summary, fit_temperature
from tumor_edge.demo.trust_summary import CALIBRATION_PNG, OOD_PNG, trust_summary

SETS = ("uniform noise", "constant grey", "colour fields", "chest X-ray-like", "inverted scans")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quadrant_bundle_summary(tmp_path):
    """A hand-built ONNX bundle with a heatmap output and a run folder whose calibration was fitted on that
    bundle's own outputs: every part of the section is written, the numbers are the measured ones."""
    from tests.runtime.heatmap_models import make_heatmap_bundle
    from tumor_edge.runtime.classifier import Classifier

    bundle = make_heatmap_bundle(tmp_path / "bundle", size=32)
    test_dir = tmp_path / "demo" / "Testing"
    paths = [save_quadrant(test_dir / CLASSES[q] / f"{i}.png", q) for q in range(4) for i in range(3)]
    labels = np.repeat(np.arange(4), 3)
    probs = Classifier.from_bundle(bundle).probabilities_for_files(paths)
    fit = fit_temperature(probs, labels)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"calibration": {
        **calibration_summary(probs, labels, fit), "ece_measured_on": "test"}}))
    np.savez(run / "test_predictions.npz", labels=labels, probabilities=probs)

    summary = trust_summary(run, bundle, test_dir, tmp_path / "out" / "trust", ood_count=6)
    md = summary["markdown"]
    assert RESEARCH_NOTICE in md
    assert "### Calibration" in md and "### Heatmaps" in md and "### Out-of-distribution" in md
    out = tmp_path / "out" / "trust"
    assert _png(out / CALIBRATION_PNG) and _png(out / OOD_PNG)
    assert f"T = {fit.temperature:.3g}" in md and "](trust/ood.png)" in md
    for q, name in enumerate(CLASSES):
        shown = summary["figures"]["heatmaps"][name]
        assert shown["scan"] in {p.name for p in paths[3 * q:3 * q + 3]}, "a scan of its own class"
        assert _png(out / shown["png"]) and f"](trust/{shown['png']})" in md
    ood = summary["figures"]["ood"]
    assert set(ood["sets"]) == set(SETS) and ood["test"]["count"] == 12 and not ood["feature_check"]
    assert ood["sets"]["uniform noise"]["flagged"] == 1.0 and ood["sets"]["constant grey"]["flagged"] == 1.0
    assert "| held-out test scans (false alarms) | 12 |" in md
    json.dumps(summary)  # the demo keeps it in its stage marker


@pytest.mark.slow
def test_summary_on_the_session_run_and_bundle(trained_run, exported_bundle, train_dataset, tmp_path):
    """The session's tiny InceptionV3 (75 px: one-cell maps) and its exported bundle, with its feature check."""
    summary = trust_summary(trained_run, exported_bundle, train_dataset / "Testing", tmp_path / "trust")
    figures = summary["figures"]
    cal = json.loads((trained_run / "metrics.json").read_text())["calibration"]
    assert figures["calibration"]["ece_before"] == cal["ece_before"]
    assert f"{100 * cal['ece_before']:.1f} % before" in summary["markdown"]
    shown = {name: f for name, f in figures["heatmaps"].items() if f}
    assert len(shown) >= 3, figures["heatmaps"]  # ~90 % accurate: a correct scan for (nearly) every class
    for name, f in shown.items():
        assert (train_dataset / "Testing" / name / f["scan"]).is_file() and _png(tmp_path / "trust" / f["png"])
    ood = figures["ood"]
    assert ood["feature_check"] and ood["test"]["count"] == 40
    for name in ("uniform noise", "constant grey"):
        assert ood["sets"][name]["flagged"] == 1.0, name
    assert ood["test"]["flagged"] <= 0.25  # false alarms at the fitted 95 % rate, on 40 scans
