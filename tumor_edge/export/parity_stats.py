"""Parity that means something at any test size: intervals, a paired test, and three verdicts.

A point estimate cannot tell "the int8 file loses 1 point" from "17 test images cannot show anything". So each
file gets Wilson intervals (accuracy, top-1 agreement), paired bootstrap intervals (the same resampled images for
both models) for the accuracy and macro-AUC differences, an exact McNemar test of the disagreements (b: images
the reference gets right and the file wrong; c: the reverse), and one verdict:
- pass: every tolerance is proven at the stated confidence (upper bounds of the drops within the tolerances,
  agreement at least the minimum);
- fail: evidence of a breach (a drop's lower bound beyond its tolerance, or agreement under the minimum required
  of the file's precision);
- not proven: neither; the report says how many test images would prove it if the observed rates held.

The accuracy drop is the paired difference (b - c) / n, bounded by Tango's score interval for a difference of
paired proportions (Tango 1998; Fagerland, Lydersen & Laake 2013 recommend it at small counts). Bounding b / n
alone would ignore the images the file gets right that the reference gets wrong, so a file that flips as many
images right as wrong could never be proven at any test size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PASS, FAIL, NOT_PROVEN = "pass", "fail", "not proven"
MAX_IMAGES_NEEDED = 10_000_000  # beyond this, "images needed" is reported as unreachable


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends: no rounding past the estimate
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of b successes in b + c trials at p = 1/2."""
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n  # 1 when n = 0: p = 1
    return min(1.0, 2.0 * tail)


def macro_auc_batch(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro one-vs-rest AUC of each row of resampled (B, n) labels and (B, n, C) probabilities, from ranks
    (Mann-Whitney, ties at mid-rank; equal to sklearn's roc_auc_score). Classes absent or universal in a
    resample are left out of that resample's mean, as tumor_edge.metrics does."""
    from scipy.stats import rankdata

    out = np.zeros(labels.shape[0])
    counted = np.zeros(labels.shape[0])
    for k in range(n_classes):
        positive = labels == k
        n_pos = positive.sum(axis=1)
        n_neg = labels.shape[1] - n_pos
        ranks = rankdata(probs[..., k], axis=1)
        valid = (n_pos > 0) & (n_neg > 0)
        auc = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / np.where(valid, n_pos * n_neg, 1)
        out += np.where(valid, auc, 0.0)
        counted += valid
    return np.where(counted > 0, out / np.maximum(counted, 1), np.nan)


def paired_bootstrap(labels: np.ndarray, reference: np.ndarray, probs: np.ndarray, n_classes: int,
                     resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                     chunk: int = 250) -> dict[str, tuple[float, float]]:
    """Percentile intervals of (file - reference) accuracy and macro AUC over paired resamples of the images."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    right_ref = reference.argmax(1) == labels
    right_file = probs.argmax(1) == labels
    acc, auc = [], []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        acc.append(right_file[idx].mean(1) - right_ref[idx].mean(1))
        y = labels[idx]
        auc.append(macro_auc_batch(y, probs[idx], n_classes) - macro_auc_batch(y, reference[idx], n_classes))
    tail = 100.0 * (1.0 - confidence) / 2.0

    def interval(values: list[np.ndarray]) -> tuple[float, float]:
        v = np.concatenate(values)
        v = v[~np.isnan(v)]
        if v.size == 0:
            return float("nan"), float("nan")
        low, high = np.percentile(v, [tail, 100.0 - tail])
        return float(low), float(high)

    return {"accuracy_diff": interval(acc), "macro_auc_diff": interval(auc)}


def tango_score(b: float, c: float, n: int, delta: float) -> float:
    """Tango's score statistic for H0: (p12 - p21) = delta, with p12 = P(reference right, file wrong) (count b) and
    p21 the reverse (count c): (b - c - n delta) / sqrt(n (2 p21~ + delta (1 - delta))), p21~ the constrained
    maximum-likelihood estimate of p21 under H0 (the positive root of a quadratic)."""
    a_, b_ = 2.0 * n, -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    p21 = (math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
    variance = n * (2.0 * p21 + delta * (1.0 - delta))
    numerator = b - c - n * delta
    if variance <= 0.0:
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def paired_difference_interval(b: float, c: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's score interval for (b - c) / n, the accuracy lost by the file (reference right and file wrong,
    minus the reverse, over n paired images): {delta : |score(delta)| <= z}, each end found by bisection (the
    score falls monotonically in delta). (-1, 1) for n = 0."""
    if n <= 0:
        return -1.0, 1.0
    z = z_value(confidence)
    estimate = (b - c) / n

    def solve(inside: float, outside: float) -> float:
        for _ in range(100):  # 2^-100: far below any count's resolution
            mid = (inside + outside) / 2.0
            if abs(tango_score(b, c, n, mid)) <= z:
                inside = mid
            else:
                outside = mid
        return inside

    low = -1.0 if abs(tango_score(b, c, n, -1.0)) <= z else solve(estimate, -1.0)
    high = 1.0 if abs(tango_score(b, c, n, 1.0)) <= z else solve(estimate, 1.0)
    return low, high


def images_to_bound_paired(b_rate: float, c_rate: float, tolerance: float, confidence: float) -> int | None:
    """The smallest n from which every larger test size proves the drop within `tolerance`: Tango's upper bound
    at the observed rates (counts rounded) stays within it for n and every count above; None when the observed
    drop itself reaches the tolerance (no number would)."""
    if b_rate - c_rate >= tolerance:
        return None

    def proves(b: float, c: float, n: int) -> bool:
        return paired_difference_interval(b, c, n, confidence)[1] <= tolerance

    return smallest_count(lambda n: proves(round(b_rate * n), round(c_rate * n), n),
                          lambda n: proves(b_rate * n + 0.5, max(c_rate * n - 0.5, 0.0), n))


def smallest_count(ok: Callable[[int], bool], worst: Callable[[int], bool]) -> int | None:
    """The smallest n >= 1 from which ok(m) holds for every m >= n; None beyond MAX_IMAGES_NEEDED.

    Counts rounded from rates make ok non-monotone (one more image can round a count up and widen the bound).
    `worst` is ok at the least favourable counts the rounding allows (each off by half a count, against the
    tolerance): it implies ok, and its slack shrinks as 1/n while the interval narrows, so once true it stays
    true. Its first n (doubling, then bisection) is therefore a point past which ok always holds; from there
    the answer walks down while ok still holds."""
    high = 1
    while not worst(high):
        high *= 2
        if high > MAX_IMAGES_NEEDED:
            return None
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if worst(mid) else (mid, high)
    while high > 1 and ok(high - 1):
        high -= 1
    return high


def images_to_bound_mean(observed: float, half_width: float, n: int, tolerance: float) -> int | None:
    """Images needed for a bootstrap bound `observed + half_width` (at n images) to fall within tolerance,
    the interval shrinking as 1/sqrt(n); None if the observed value itself breaks the tolerance."""
    if observed >= tolerance:
        return None
    if half_width <= 0:
        return n
    return max(n, math.ceil(n * (half_width / (tolerance - observed)) ** 2))


@dataclass
class ParityStatistics:
    """One file's statistics against the reference, and its verdict."""

    n: int
    confidence: float
    accuracy_ci: tuple[float, float]
    agreement_ci: tuple[float, float]
    accuracy_diff_ci: tuple[float, float]  # file - reference, paired bootstrap
    macro_auc_diff_ci: tuple[float, float]
    ref_right_file_wrong: int  # McNemar b
    ref_wrong_file_right: int  # McNemar c
    mcnemar_p: float
    accuracy_drop_ci: tuple[float, float]  # Tango's interval of the paired drop (b - c) / n (verdicts: its top)
    verdict: str = PASS
    reasons: list[str] = field(default_factory=list)
    images_needed: int | None = None  # to prove every tolerance, if the observed rates held; None: no number


def judge(labels: np.ndarray, reference: np.ndarray, probs: np.ndarray, n_classes: int, *,
          max_accuracy_drop: float, max_auc_drop: float, min_agreement: float | None,
          confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> ParityStatistics:
    """Statistics and verdict of one file. `max_accuracy_drop` is a fraction (0.01 = 1 point); `min_agreement`
    None when the file's precision has no agreement requirement."""
    labels = np.asarray(labels)
    n = len(labels)
    right_ref = reference.argmax(1) == labels
    right_file = probs.argmax(1) == labels
    agree = int(np.sum(probs.argmax(1) == reference.argmax(1)))
    b = int(np.sum(right_ref & ~right_file))
    c = int(np.sum(~right_ref & right_file))
    boot = paired_bootstrap(labels, reference, probs, n_classes, resamples, confidence, seed)
    drop_ci = paired_difference_interval(b, c, n, confidence)
    stats = ParityStatistics(
        n=n, confidence=confidence, accuracy_ci=wilson_interval(int(right_file.sum()), n, confidence),
        agreement_ci=wilson_interval(agree, n, confidence), accuracy_diff_ci=boot["accuracy_diff"],
        macro_auc_diff_ci=boot["macro_auc_diff"], ref_right_file_wrong=b, ref_wrong_file_right=c,
        mcnemar_p=mcnemar_exact(b, c), accuracy_drop_ci=drop_ci)
    pct = 100.0 * confidence
    auc_low, auc_high = boot["macro_auc_diff"]
    auc_drop_upper = -auc_low if not math.isnan(auc_low) else math.inf
    auc_drop_lower = -auc_high if not math.isnan(auc_high) else -math.inf
    failures, unproven = [], []
    if drop_ci[0] > max_accuracy_drop + 1e-12:
        failures.append(f"accuracy drop at least {100 * drop_ci[0]:.1f} points ({pct:g}% paired score interval of "
                        f"{b} lost and {c} gained of {n} images), over the {100 * max_accuracy_drop:g}-point "
                        "tolerance")
    elif drop_ci[1] > max_accuracy_drop + 1e-12:
        unproven.append(f"accuracy drop could be up to {100 * drop_ci[1]:.1f} points ({pct:g}% paired score "
                        f"interval of {b} lost and {c} gained of {n} images), over the "
                        f"{100 * max_accuracy_drop:g}-point tolerance")
    if auc_drop_lower > max_auc_drop + 1e-12:
        failures.append(f"macro AUC drop at least {auc_drop_lower:.4f} ({pct:g}% bootstrap), over {max_auc_drop:g}")
    elif auc_drop_upper > max_auc_drop + 1e-12:
        unproven.append(f"macro AUC drop could be up to {auc_drop_upper:.4f} ({pct:g}% bootstrap), "
                        f"over {max_auc_drop:g}")
    if min_agreement is not None and agree / max(n, 1) < min_agreement - 1e-12:
        failures.append(f"top-1 agreement {100 * agree / max(n, 1):.1f}% under {100 * min_agreement:g}%")
    stats.verdict = FAIL if failures else NOT_PROVEN if unproven else PASS
    stats.reasons = failures or unproven
    if stats.verdict == NOT_PROVEN:
        needed = [images_to_bound_paired(b / n, c / n, max_accuracy_drop, confidence)]
        if not math.isnan(auc_low):
            observed = -(auc_low + auc_high) / 2.0
            needed.append(images_to_bound_mean(observed, auc_drop_upper - observed, n, max_auc_drop))
        stats.images_needed = None if any(x is None for x in needed) else max(max(needed), n + 1)
    return stats
