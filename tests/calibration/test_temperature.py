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


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _separated(n: int, seed: int, margin: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores a model gives a validation split it separates perfectly: every top-1 right, moderate confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    z = rng.normal(0, 0.5, (n, 4))
    z[np.arange(n), labels] += margin
    return _softmax(z), labels


def test_perfectly_separated_validation_keeps_t1():
    """Issue 19: 28 validation images, all right: the NLL falls monotonically as T -> 0, so the fit ran to the
    range's edge (T = 0.05) and test probabilities became 1.0 / 1e-44. No errors: nothing to fit, T = 1."""
    from tumor_edge.calibration.temperature import choose_temperature

    probs, labels = _separated(28, seed=0)
    assert (probs.argmax(1) == labels).all()
    raw = fit_temperature(probs, labels)
    assert raw.temperature < 0.2, "the unguarded fit runs towards the lower bound (what the rule must refuse)"
    choice = choose_temperature(probs, labels)
    assert choice.temperature == 1.0
    assert "no misclassified" in choice.kept_t1_because


def test_one_error_is_not_enough_to_sharpen():
    """With one mistake the out-of-fold check can never hold a mistake out while fitting on another: sharpening
    cannot be judged, so T = 1 stays (and a test mistake would have been punished by a tiny T)."""
    from tumor_edge.calibration.temperature import MIN_ERRORS, choose_temperature

    probs, labels = _separated(40, seed=1)
    labels = labels.copy()
    labels[0] = (probs[0].argmax() + 1) % 4  # one confident mistake
    assert int((probs.argmax(1) != labels).sum()) == 1 < MIN_ERRORS
    choice = choose_temperature(probs, labels)
    assert choice.temperature == 1.0 and "misclassified" in choice.kept_t1_because


def test_a_fit_at_the_range_edge_is_refused():
    """Scores already far too soft: the NLL optimum lies below the range's lower bound. A temperature pinned
    to a bound is not an estimate: T = 1 is kept and the reason says so."""
    from tumor_edge.calibration.temperature import T_BOUNDS, choose_temperature

    rng = np.random.default_rng(2)
    z = rng.normal(0, 2.0, (400, 4))
    labels = np.array([rng.choice(4, p=row) for row in _softmax(z)])
    soft = _softmax(z * T_BOUNDS[0] / 2)  # true T is half the lower bound
    assert fit_temperature(soft, labels).temperature == pytest.approx(T_BOUNDS[0], rel=0.05)
    choice = choose_temperature(soft, labels)
    assert choice.temperature == 1.0 and "edge" in choice.kept_t1_because


def test_overconfident_scores_still_get_t_above_1():
    """The rule refuses only what it cannot trust: scores sharpened 3x with plenty of errors keep T ~ 3."""
    from tumor_edge.calibration.temperature import choose_temperature

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, (600, 4))
    labels = np.array([rng.choice(4, p=row) for row in _softmax(z)])
    choice = choose_temperature(_softmax(3 * z), labels)
    assert choice.temperature == pytest.approx(3.0, rel=0.15) and choice.kept_t1_because is None
    assert choice.out_of_fold_gain > 0


def test_out_of_fold_check_spreads_mistakes_over_the_folds():
    """Each held-out fold holds mistakes whenever there are at least as many as folds, so the check always
    measures what the fitted T does to a mistake it was not fitted on."""
    from tumor_edge.calibration.temperature import out_of_fold_parts

    labels_right = np.array([True] * 45 + [False] * 5)
    parts = out_of_fold_parts(labels_right, folds=5, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))
    assert all((~labels_right[p]).sum() == 1 for p in parts)
