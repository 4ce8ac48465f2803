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
    """28 validation images, all right: the NLL falls monotonically as T -> 0, so an unguarded fit runs to the
    range's edge and test probabilities become 1.0 / 1e-44. No errors: nothing to fit, T = 1."""
    from tumor_edge.calibration.temperature import choose_temperature

    probs, labels = _separated(28, seed=0)
    assert (probs.argmax(1) == labels).all()
    raw = fit_temperature(probs, labels)
    assert raw.temperature < 0.2, "the unguarded fit runs towards the lower bound (what the rule must refuse)"
    choice = choose_temperature(probs, labels)
    assert choice.temperature == 1.0
    assert "no misclassified" in choice.kept_t1_because


def test_one_error_is_not_enough_to_sharpen():
    """With one mistake no held-out estimate can hold a mistake out while fitting on another: sharpening cannot
    be judged, so T = 1 stays (and a test mistake would have been punished by a tiny T)."""
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
    from tumor_edge.calibration.temperature import choose_temperature, held_out_gains, lower_bound

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, (600, 4))
    labels = np.array([rng.choice(4, p=row) for row in _softmax(z)])
    choice = choose_temperature(_softmax(3 * z), labels)
    assert choice.temperature == pytest.approx(3.0, rel=0.15) and choice.kept_t1_because is None
    bound = lower_bound(held_out_gains(_softmax(3 * z), labels))
    assert bound > 0 and choice.out_of_fold_gain > bound


def test_out_of_fold_check_spreads_mistakes_over_the_folds():
    """Each held-out fold holds mistakes whenever there are at least as many as folds, so the check always
    measures what the fitted T does to a mistake it was not fitted on."""
    from tumor_edge.calibration.temperature import out_of_fold_parts

    labels_right = np.array([True] * 45 + [False] * 5)
    parts = out_of_fold_parts(labels_right, folds=5, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))
    assert all((~labels_right[p]).sum() == 1 for p in parts)


def _model_draw(rng: np.random.Generator, n: int, sharpen: float) -> tuple[np.ndarray, np.ndarray]:
    """A validation split of n images from a model whose labels follow softmax(z) (4 classes, mostly right) and
    whose scores are softmax(sharpen * z): calibrated at sharpen = 1, over-confident above (true T = sharpen)."""
    hint = rng.integers(0, 4, n)
    z = rng.normal(0, 1.0, (n, 4))
    z[np.arange(n), hint] += rng.uniform(3.0, 5.0)
    labels = (rng.random(n)[:, None] > np.cumsum(_softmax(z), axis=1)).sum(axis=1)
    return _softmax(sharpen * z), labels


def _shipped(sharpen: float, draws: int, seed: int) -> list[float]:
    from tumor_edge.calibration.temperature import choose_temperature

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        probs, labels = _model_draw(rng, int(rng.integers(28, 151)), sharpen)
        out.append(choose_temperature(probs, labels).temperature)
    return out


def test_calibrated_models_keep_t1_in_at_least_95_percent_of_validation_draws():
    """True T = 1, validation splits of 28-150 images: any fitted T is noise. A rule that ships T whenever a
    held-out gain is positive ships one in about a third of draws; the significance test keeps T = 1 in at least
    95 % of them."""
    shipped = _shipped(1.0, 200, seed=0)
    rate = np.mean(np.array(shipped) != 1.0)
    assert rate <= 0.05, f"{rate:.1%} of calibrated models shipped T != 1"


def test_over_confident_models_still_find_t_above_1():
    """True T = 3 on the same split sizes: most draws ship a T, and every shipped T is above 1."""
    shipped = np.array(_shipped(3.0, 60, seed=1))
    assert np.mean(shipped != 1.0) >= 0.5
    assert np.all(shipped[shipped != 1.0] > 1.5)


def _two_mistakes(n: int, mistakes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Right images at a low margin (under-confident), mistakes confident in the wrong class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    z = rng.normal(0, 0.2, (n, 4))
    z[np.arange(n), labels] += 1.0
    for i in range(mistakes):
        z[i] = rng.normal(0, 0.2, 4)
        z[i, (labels[i] + 1) % 4] += 3.0
    return _softmax(z), labels


def test_two_validation_mistakes_are_held_out_and_pay_for_sharpening():
    """40 validation images, exactly 2 confident mistakes: the full fit sharpens (T about 0.4) because 38 right
    images gain. Held out, each mistake is scored at a T fitted on a rest holding one mistake or none, and what
    sharpening costs it makes the gain not significant: T = 1 ships. On a test split of the same model with
    more mistakes, the sharpened T would have raised the NLL."""
    from tumor_edge.calibration.temperature import choose_temperature, held_out_gains, negative_log_likelihood

    probs, labels = _two_mistakes(40, 2, seed=0)
    assert int((probs.argmax(1) != labels).sum()) == 2
    choice = choose_temperature(probs, labels)
    assert choice.fit.temperature < 0.5 and choice.fit.nll_after < choice.fit.nll_before
    assert choice.temperature == 1.0 and "not significantly positive" in choice.kept_t1_because
    gains = held_out_gains(probs, labels)
    assert gains[:2].max() < 0 < gains[2:].min()  # the mistakes lose, the right images gain
    test, test_labels = _two_mistakes(400, 80, seed=1)
    z = np.log(test)
    assert negative_log_likelihood(z, test_labels, choice.fit.temperature) > negative_log_likelihood(z, test_labels)
