"""Temperature scaling and ECE: against direct computations, and on a real over-confident tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.calibration import (
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from tumor_edge.calibration.plots import reliability_diagram
from tumor_edge.errors import ConfigError


def test_ece_matches_a_direct_computation():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1, 0])
    # bins of width 1/15: 0.95 -> bin 14, 0.9 -> bin 13, 0.6 -> bin 8, 0.7 -> bin 10, 0.55 -> bin 8
    # bin 14: conf .95 acc 1; bin 13: .9 vs 0; bin 8: conf (.6+.55)/2 acc 1/2; bin 10: .7 vs 1
    expected = (abs(1 - .95) + abs(0 - .9) + 2 * abs(.5 - .575) + abs(1 - .7)) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    table = reliability_bins(probs, labels)
    assert table.counts.sum() == 5 and table.counts[8] == 2


def test_probabilities_route_equals_logits_route():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (50, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for t in (0.5, 1.0, 2.7):
        np.testing.assert_allclose(apply_temperature(probs, t), apply_temperature(logits, t, "logits"), atol=1e-9)
    assert apply_temperature(probs.astype(np.float32), 2.0).dtype == np.float32


def test_fit_recovers_the_temperature_of_sharpened_scores():
    """Labels drawn from softmax(z); the scores handed over are softmax(3 z): the fit must find T ~ 3."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (3000, 4))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    sharp = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    fit = fit_temperature(sharp, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before


def test_calibration_lowers_ece_on_an_overconfident_real_model(tmp_path):
    """A small MLP over-trained on noisy labels: T fitted on validation lowers ECE on a separate test split,
    and never changes a label."""
    from tests.trust_models import overconfident_mlp

    model, make_split = overconfident_mlp()
    (xv, yv), (xt, yt) = make_split(400, 2), make_split(400, 3)
    val, test = model.predict(xv, verbose=0), model.predict(xt, verbose=0)
    fit = fit_temperature(val, yv)
    assert fit.temperature > 1.5, "an over-trained model is over-confident: T above 1"
    before, after = expected_calibration_error(test, yt), expected_calibration_error(
        apply_temperature(test, fit.temperature), yt)
    assert before > 0.15 and after < before / 2, (before, after)
    assert np.array_equal(apply_temperature(test, fit.temperature).argmax(1), test.argmax(1))
    summary = calibration_summary(val, yv, fit)
    assert summary["ece_after"] < summary["ece_before"] and summary["fitted_on"] == 400
    png = reliability_diagram(test, yt, fit.temperature, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="positive number"):
        apply_temperature(np.full((1, 2), 0.5), bad)


def test_mismatched_labels_are_a_config_error():
    with pytest.raises(ConfigError, match="class indices"):
        expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ConfigError, match="N labels"):
        fit_temperature(np.full((2, 2), 0.5), np.array([0]))
