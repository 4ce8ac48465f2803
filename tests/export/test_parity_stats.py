"""Parity statistics against direct computations (scipy, scikit-learn, the defining equations), and the three
verdicts: one flipped image of 17 is not a failure but not a proof either."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumor_edge.export.parity_stats import (
    FAIL,
    NOT_PROVEN,
    PASS,
    images_to_bound_paired,
    judge,
    macro_auc_batch,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
    z_value,
)


@pytest.mark.parametrize(("k", "n"), [(0, 17), (16, 17), (17, 17), (5, 40), (390, 400), (1, 1311)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """At each bound p (inside (0, 1)): (k/n - p)^2 = z^2 p (1 - p) / n, the interval's definition."""
    z = z_value(0.95)
    assert z == pytest.approx(1.959964, abs=1e-6)
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    for p in (low, high):
        if 0.0 < p < 1.0:
            assert (k / n - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (0, 5), (3, 9), (12, 11), (40, 10)])
def test_mcnemar_exact_is_the_binomial_test(b, c):
    from scipy.stats import binomtest

    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def _data(n: int, seed: int, flip: float = 0.1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    reference = rng.dirichlet(np.ones(4), n)
    reference[np.arange(n), labels] += 0.6  # a decent model
    reference /= reference.sum(1, keepdims=True)
    probs = np.clip(reference + rng.normal(0, flip, reference.shape), 1e-6, None)
    return labels, reference, probs / probs.sum(1, keepdims=True)


def test_rank_auc_matches_sklearn_including_ties():
    from tumor_edge.metrics import one_vs_rest_auc

    labels, reference, _ = _data(60, 1)
    reference = np.round(reference, 1)  # many ties
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 60, (5, 60))
    got = macro_auc_batch(labels[idx], reference[idx], 4)
    for row, i in zip(got, idx):
        assert row == pytest.approx(one_vs_rest_auc(labels[i], reference[i], 4)[1], abs=1e-12)


def test_paired_bootstrap_matches_a_direct_loop():
    from tumor_edge.metrics import one_vs_rest_auc

    labels, reference, probs = _data(50, 3)
    got = paired_bootstrap(labels, reference, probs, 4, resamples=300, seed=7, chunk=300)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 50, (300, 50))
    acc = [np.mean(probs[i].argmax(1) == labels[i]) - np.mean(reference[i].argmax(1) == labels[i]) for i in idx]
    auc = [one_vs_rest_auc(labels[i], probs[i], 4)[1] - one_vs_rest_auc(labels[i], reference[i], 4)[1] for i in idx]
    assert got["accuracy_diff"] == pytest.approx(tuple(np.percentile(acc, [2.5, 97.5])), abs=1e-12)
    assert got["macro_auc_diff"] == pytest.approx(tuple(np.percentile(auc, [2.5, 97.5])), abs=1e-12)


def test_images_needed_is_the_smallest_count_that_proves():
    """No disagreement: Tango's bound is the Wilson bound of 0 / n, z^2 / (n + z^2), within t from
    n = z^2 (1 - t) / t."""
    n = images_to_bound_paired(0.0, 0.0, 0.01, 0.95)
    assert wilson_interval(0, n)[1] <= 0.01 < wilson_interval(0, n - 1)[1]
    assert n == math.ceil(z_value(0.95) ** 2 * 0.99 / 0.01)


def _one_flipped(n: int):
    labels = np.arange(n) % 4
    reference = np.full((n, 4), 0.1)
    reference[np.arange(n), labels] = 0.7
    probs = reference.copy()
    probs[0] = np.roll(probs[0], 1)  # the file gets image 0 wrong
    return labels, reference, probs


def test_one_flip_in_17_is_not_proven_and_says_how_many_images_would_do():
    labels, reference, probs = _one_flipped(17)
    stats = judge(labels, reference, probs, 4, max_accuracy_drop=0.01, max_auc_drop=0.01, min_agreement=None)
    assert stats.verdict == NOT_PROVEN, stats.reasons
    assert (stats.ref_right_file_wrong, stats.ref_wrong_file_right) == (1, 0)
    assert stats.mcnemar_p == 1.0
    assert stats.images_needed is None  # 1 of 17 lost is 5.9 points: no test size proves 1 point at that rate
    labels, reference, probs = _one_flipped(400)
    stats = judge(labels, reference, probs, 4, max_accuracy_drop=0.01, max_auc_drop=0.01, min_agreement=None)
    assert stats.verdict == NOT_PROVEN and stats.images_needed > 400
    assert wilson_interval(round(stats.images_needed / 400), stats.images_needed)[1] <= 0.01


def test_identical_outputs_pass_once_the_test_set_is_large_enough():
    labels, reference, _ = _one_flipped(400)
    stats = judge(labels, reference, reference.copy(), 4, max_accuracy_drop=0.01, max_auc_drop=0.01,
                  min_agreement=0.99)
    assert stats.verdict == PASS and stats.accuracy_drop_ci[1] <= 0.01
    small = judge(labels[:40], reference[:40], reference[:40].copy(), 4, max_accuracy_drop=0.01,
                  max_auc_drop=0.01, min_agreement=0.99)
    assert small.verdict == NOT_PROVEN and small.images_needed == images_to_bound_paired(0.0, 0.0, 0.01, 0.95)


def test_evidence_of_a_breach_fails():
    labels, reference, _ = _one_flipped(200)
    probs = reference.copy()
    probs[:60] = np.roll(probs[:60], 1, axis=1)  # 30 % of the images lost
    stats = judge(labels, reference, probs, 4, max_accuracy_drop=0.01, max_auc_drop=0.01, min_agreement=None)
    assert stats.verdict == FAIL and any("accuracy drop at least" in r for r in stats.reasons)
    assert stats.mcnemar_p < 1e-10
    agreement = judge(labels, reference, probs, 4, max_accuracy_drop=1.0, max_auc_drop=1.0, min_agreement=0.99)
    assert agreement.verdict == FAIL and "agreement" in agreement.reasons[0]


def _paired(n: int, b: int, c: int, d: int, seed: int = 0):
    """labels, reference and file probabilities with exactly b images the reference gets right and the file
    wrong, c the reverse, d both wrong (the rest both right); confident, distinct scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    wrong = (labels + 1 + rng.integers(0, 3, n)) % 4
    kind = np.zeros(n, int)
    kind[:b], kind[b:b + c], kind[b + c:b + c + d] = 1, 2, 3
    kind = rng.permutation(kind)

    def scores(right: np.ndarray) -> np.ndarray:
        top = np.where(right, labels, wrong)
        p = rng.dirichlet(np.ones(4), n) * 0.3
        p[np.arange(n), top] += 0.7
        return p / p.sum(1, keepdims=True)

    reference = scores((kind == 0) | (kind == 1))
    probs = reference.copy()  # the file: the reference's scores, except on the images it flips
    flipped = (kind == 1) | (kind == 2)
    probs[flipped] = scores(kind == 2)[flipped]
    return labels, reference, probs


@pytest.mark.parametrize(("n", "b", "c", "verdict"), [
    (16_000, 240, 240, PASS),  # as many flipped right as wrong: the paired drop is bounded to ~0.27 points
    (16_000, 400, 80, FAIL),  # 2 points lost: the lower bound is beyond the 1-point tolerance
    (381, 0, 0, PASS),  # no disagreement: z^2 / (n + z^2) = 0.998 points
])
def test_the_paired_verdict_counts_images_flipped_both_ways(n, b, c, verdict):
    """Bounding b/n alone would make b = c = 240 of 16,000 "not proven" and say no test size would prove it."""
    labels, reference, probs = _paired(n, b, c, d=n // 20)
    stats = judge(labels, reference, probs, 4, max_accuracy_drop=0.01, max_auc_drop=0.01, min_agreement=None,
                  resamples=200)
    assert (stats.ref_right_file_wrong, stats.ref_wrong_file_right) == (b, c)
    assert stats.verdict == verdict, stats.reasons
    low, high = stats.accuracy_drop_ci
    assert low <= (b - c) / n <= high and stats.accuracy_drop_ci[1] == high


def test_tango_interval_at_no_disagreement_is_the_wilson_bound():
    from tumor_edge.export.parity_stats import paired_difference_interval

    z = z_value(0.95)
    for n in (17, 381, 1311):
        low, high = paired_difference_interval(0, 0, n)
        assert high == pytest.approx(z * z / (n + z * z), rel=1e-9) == pytest.approx(wilson_interval(0, n)[1])
        assert low == pytest.approx(-high, rel=1e-9)


@pytest.mark.parametrize(("b", "c", "n"), [(3, 9, 40), (240, 240, 16_000), (400, 80, 16_000), (1, 0, 17)])
def test_tango_bounds_solve_the_score_equation_and_the_score_falls(b, c, n):
    from tumor_edge.export.parity_stats import paired_difference_interval, tango_score

    z = z_value(0.95)
    low, high = paired_difference_interval(b, c, n)
    for end in (low, high):
        if -1.0 < end < 1.0:
            assert abs(tango_score(b, c, n, end)) == pytest.approx(z, rel=1e-6)
    grid = np.linspace(low, high, 50)
    scores = [tango_score(b, c, n, d) for d in grid]
    assert all(x >= y - 1e-12 for x, y in zip(scores, scores[1:])), "the score falls as delta rises"


def test_tango_interval_is_as_wide_as_the_paired_bootstrap():
    """Two routes to the same quantity: the score interval and the paired bootstrap's percentile interval of the
    accuracy change agree in width within 15 % on a large sample (both estimate the same standard error)."""
    from tumor_edge.export.parity_stats import paired_difference_interval

    labels, reference, probs = _paired(4000, 120, 90, 200, seed=3)
    boot = paired_bootstrap(labels, reference, probs, 4, resamples=2000, seed=1)["accuracy_diff"]
    low, high = paired_difference_interval(120, 90, 4000)
    assert (high - low) == pytest.approx(boot[1] - boot[0], rel=0.15)
    assert -boot[1] == pytest.approx(low, abs=0.003) and -boot[0] == pytest.approx(high, abs=0.003)


def test_images_needed_follows_the_paired_rates():
    from tumor_edge.export.parity_stats import images_to_bound_paired, paired_difference_interval

    needed = images_to_bound_paired(0.015, 0.015, 0.01, 0.95)
    assert needed is not None
    assert paired_difference_interval(round(0.015 * needed), round(0.015 * needed), needed)[1] <= 0.01
    assert paired_difference_interval(round(0.015 * (needed - 1)), round(0.015 * (needed - 1)), needed - 1)[1] > 0.01
    assert images_to_bound_paired(0.03, 0.01, 0.01, 0.95) is None  # an observed 2-point drop: no number proves 1


@pytest.mark.parametrize("b_rate, c_rate, proving_early", [
    (2 / 300, 1 / 300, 1087),  # proves at 1,087, fails again later: the answer is past the last failure
    (0.005, 0.0, 1441),  # 0.5 % lost, none gained: proves at 1,441, fails again at 1,701-1,705
])
def test_images_needed_is_where_every_larger_test_size_proves(b_rate, c_rate, proving_early):
    """Counts rounded from rates make "proves at n" non-monotone in n: the figure is the smallest n from which
    every larger n proves, not a point a bisection happened to land on."""
    from tumor_edge.export.parity_stats import images_to_bound_paired, paired_difference_interval

    def proves(n: int) -> bool:
        return paired_difference_interval(round(b_rate * n), round(c_rate * n), n)[1] <= 0.01

    needed = images_to_bound_paired(b_rate, c_rate, 0.01, 0.95)
    assert proves(proving_early) and needed > proving_early  # an early proving n is not enough
    assert not proves(needed - 1)
    assert all(proves(n) for n in range(needed, 2 * needed))
