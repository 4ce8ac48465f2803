"""MODEL_CARD.md: every section present, research notice first, numbers copied from the bundle's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.runtime.models import CLASSES, make_bundle, save_quadrant
from tumor_edge import RESEARCH_NOTICE
from tumor_edge.calibration import calibration_summary, fit_temperature
from tumor_edge.contracts.bundle import MODEL_CARD, BundleMetadata
from tumor_edge.export.model_card import NOT_RECORDED, SECTIONS, render_model_card, wilson, write_model_card
from tumor_edge.runtime.classifier import Classifier


def _sections_in_order(card: str) -> list[str]:
    return [line[3:] for line in card.splitlines() if line.startswith("## ")]


@pytest.fixture
def quadrant_bundle_with_figures(tmp_path):
    """A real (ONNX quadrant) bundle; its calibration figures measured by running its own classifier on 40
    generated scans, and a parity summary in export's shape."""
    bundle = make_bundle(tmp_path / "bundle")
    paths, labels = [], []
    for i in range(40):
        paths.append(save_quadrant(tmp_path / "scans" / f"{i:02d}.png", i % 4))
        labels.append(i % 4)
    probs = Classifier.from_bundle(bundle).probabilities_for_files(paths)
    fit = fit_temperature(probs, np.array(labels))
    meta = json.loads((bundle / "metadata.json").read_text())
    meta["calibration"] = calibration_summary(probs, np.array(labels), fit)
    accuracy = float(np.mean(probs.argmax(1) == np.array(labels)))
    meta["metrics"] = {"parity": {"passed": True, "verdict": "not proven", "test_data": "generated quadrants",
                                  "n_images": 40, "keras": {"accuracy": accuracy, "macro_auc": 1.0},
                                  "files": {"model_fp32.onnx": {"accuracy": accuracy, "macro_auc": 1.0,
                                                                "delta_accuracy_points": 0.0, "delta_auc": 0.0,
                                                                "agreement": 1.0, "verdict": "not proven"}}}}
    meta["ood"] = {"score": "mahalanobis", "threshold": 55.5, "tpr": 0.95, "measured_tpr": 0.955, "count": 200,
                   "evaluation": {"noise": {"count": 100, "flagged": 1.0, "input_checks_flagged": 0.98,
                                                  "either_flagged": 1.0}}}
    BundleMetadata.from_dict(meta)  # still valid metadata (extra keys are the new fields)
    return bundle, meta


def test_card_has_every_section_and_the_metadata_numbers(quadrant_bundle_with_figures):
    bundle, meta = quadrant_bundle_with_figures
    path = write_model_card(bundle, meta)
    assert path.name == MODEL_CARD
    card = path.read_text()
    assert _sections_in_order(card) == list(SECTIONS)
    body = card.split("---\n", 2)[2]
    assert body.index(RESEARCH_NOTICE) < body.index("## Model details"), "intended use and notice come first"
    assert "pipeline_tag: image-classification" in card and "model-index:" in card
    for name in CLASSES:
        assert f"| {name} |" in card
    cal = meta["calibration"]
    assert f"T = {cal['temperature']:.4g}" in card
    assert f"{100 * cal['ece_before']:.1f} %" in card and f"{100 * cal['ece_after']:.1f} %" in card
    lo, hi = wilson(meta["metrics"]["parity"]["keras"]["accuracy"], 40)
    assert f"{lo:.4f}–{hi:.4f}, n = 40" in card
    assert "| model_fp32.onnx |" in card and "not proven" in card
    assert "threshold 55.5 fitted on 200 validation images" in card
    assert "| noise | 100 | 100.0 % | 98.0 % | 100.0 % |" in card
    assert "This bundle's models give no heatmap output." in card


def test_card_shows_each_files_calibration(quadrant_bundle_with_figures):
    """Parity's per-file ECE (before/after the bundle's temperature) is copied into the card's calibration
    section, beside the run's figures; a parity record without it adds no table."""
    from tumor_edge.calibration.temperature import ece_before_after

    _, meta = quadrant_bundle_with_figures
    parity = meta["metrics"]["parity"]
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]])
    parity["files"]["model_fp32.onnx"]["calibration"] = ece_before_after(probs, labels, 2.0)
    card = render_model_card(meta)
    calibration = card.split("## Calibration")[1].split("## Exported files")[0]
    after = ece_before_after(probs, labels, 2.0)["ece_after"]
    assert f"| model_fp32.onnx | 40.0 % | {100 * after:.1f} % |" in calibration and "reliability.png" in calibration
    del parity["files"]["model_fp32.onnx"]["calibration"]
    assert "ECE before scaling" not in render_model_card(meta)


def test_missing_figures_say_not_recorded(tmp_path):
    meta = json.loads((make_bundle(tmp_path / "b") / "metadata.json").read_text())
    card = render_model_card(meta)
    assert _sections_in_order(card) == list(SECTIONS)
    assert f"Temperature scaling: {NOT_RECORDED}." in card and f"Parity: {NOT_RECORDED}." in card
    assert "model-index" not in card  # no numbers, no claimed results


def test_wilson_interval_matches_known_values():
    # 8 of 10: 95 % Wilson interval 0.490-0.943 (Newcombe 1998, table I style computation)
    lo, hi = wilson(0.8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson(1.0, 40)[1] == 1.0 and wilson(0.0, 40)[0] == 0.0


@pytest.mark.slow
def test_card_from_the_exported_bundle(exported_bundle):
    """The session's real exported bundle (tiny InceptionV3): Keras accuracy and every file's agreement."""
    meta = json.loads((exported_bundle / "metadata.json").read_text())
    card = render_model_card(meta)
    parity = meta["metrics"]["parity"]
    assert f"{parity['keras']['accuracy']:.4f}" in card
    for name, f in parity["files"].items():
        assert f"| {name} |" in card and f"{f['agreement']:.4f}" in card
    assert _sections_in_order(card) == list(SECTIONS)
    # the trust fields export wrote: heatmap (and OOD) outputs, per-file heatmap parity, the card itself
    written = (exported_bundle / MODEL_CARD).read_text()
    assert _sections_in_order(written) == list(SECTIONS)
    assert "heatmap" in meta["outputs"] and set(meta["metrics"]["heatmap_parity"]) == set(parity["files"])
    for name, value in meta["metrics"]["heatmap_parity"].items():
        shown = "not measurable (every map is one cell)" if value is None else f"{value:.4f}"
        assert f"| {name} | {shown} |" in card and f"| {name} | {shown} |" in written
