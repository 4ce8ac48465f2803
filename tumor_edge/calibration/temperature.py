"""Temperature scaling (Guo et al. 2017): one scalar T divides the logits before the softmax, fitted by
minimising the validation NLL. It changes confidence, never the label. On probabilities it is exact too:
log p differs from the logits by a per-row constant, which the softmax ignores.

`choose_temperature` keeps T = 1, with the reason, unless all three hold:
1. The validation split holds at least MIN_ERRORS mistakes: with none the NLL has no interior minimum, and with
   one no held-out estimate can fit on a mistake while scoring another.
2. The optimum is not within EDGE_FACTOR of a bound of T_BOUNDS: then the range set it, not the data.
3. Its gain on images the fit never saw is significantly positive: each fold (holding its share of the mistakes)
   is scored at the T fitted on the others, and the one-sided CONFIDENCE bootstrap lower bound of the mean
   per-image gain must be above 0. A calibrated model's fitted T is noise and rarely clears it.

Calibration is measured by the expected calibration error (Guo et al. 2017): the count-weighted mean gap between
accuracy and mean confidence over equal-width bins of the top probability (15 bins: the paper's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tumor_edge.errors import ConfigError

DEFAULT_BINS = 15

SCORE_KINDS = ("probabilities", "logits")
T_BOUNDS = (0.05, 20.0)  # beyond these a model is broken, not miscalibrated
_FLOOR = 1e-12  # float32 probabilities underflow to 0; log(0) would make T meaningless
MIN_ERRORS = 2  # misclassified validation images needed before a temperature is fitted at all (rule 1)
EDGE_FACTOR = 1.05  # an optimum within this factor of a bound is "at the edge" (rule 2)
FOLDS = 5
CONFIDENCE = 0.95  # one-sided, for rule 3
RESAMPLES = 2000



@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin: how many predictions, their mean confidence and their accuracy (NaN for empty bins)."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ConfigError(f"calibration needs probabilities (N, classes) and N labels, not {probs.shape} and "
                          f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ConfigError(f"labels must be class indices from 0 to {probs.shape[1] - 1}")
    return probs, labels


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> ReliabilityBins:
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 (impossible for a top class) would go to the first.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, accuracy)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE in [0, 1] (0: every bin's accuracy equals its confidence)."""
    table = reliability_bins(probs, labels, bins)
    used = table.counts > 0
    gaps = np.abs(table.accuracy[used] - table.confidence[used])
    return float((gaps * table.counts[used]).sum() / table.counts.sum())


def log_scores(scores: np.ndarray, kind: str = "probabilities") -> np.ndarray:
    """Logits up to a per-row constant: the logits themselves, or log of (floored) probabilities."""
    if kind not in SCORE_KINDS:
        raise ConfigError(f"score kind must be one of {', '.join(SCORE_KINDS)}, not {kind!r}")
    scores = np.asarray(scores, dtype=np.float64)
    return scores if kind == "logits" else np.log(np.clip(scores, _FLOOR, 1.0))


def apply_temperature(scores: np.ndarray, temperature: float, kind: str = "probabilities") -> np.ndarray:
    """Calibrated probabilities, same shape and dtype as `scores` (float32 in, float32 out)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"a temperature must be a positive number, not {temperature!r}")
    z = log_scores(scores, kind) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out = e / e.sum(axis=-1, keepdims=True)
    return out.astype(np.float32) if np.asarray(scores).dtype == np.float32 else out


def nll_each(z: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per image: -log softmax(z / T)[label]."""
    scaled = z / temperature
    shift = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - shift).sum(axis=1)) + shift[:, 0]
    return log_norm - scaled[np.arange(len(labels)), labels]


def negative_log_likelihood(z: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return float(np.mean(nll_each(z, labels, temperature)))


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float
    nll_after: float
    count: int  # validation images it was fitted on


def _fitted_t(z: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of log-scores z (bounded 1-D search over log T, convex enough in practice), never
    worse than T = 1."""
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    result = minimize_scalar(lambda log_t: negative_log_likelihood(z, labels, float(np.exp(log_t))),
                             bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    best = float(np.exp(result.x))
    return best if negative_log_likelihood(z, labels, best) <= negative_log_likelihood(z, labels) else 1.0


def fit_temperature(scores: np.ndarray, labels: np.ndarray, kind: str = "probabilities") -> TemperatureFit:
    """T minimising the validation NLL."""
    probs_like, labels = _check(scores, labels)
    z = log_scores(probs_like, kind)
    best = round(_fitted_t(z, labels), 6)
    return TemperatureFit(best, negative_log_likelihood(z, labels), negative_log_likelihood(z, labels, best),
                          int(len(labels)))


def _refusal(z: np.ndarray, labels: np.ndarray, fit: TemperatureFit) -> str | None:
    """Rules 1 and 2 for one fit: why it cannot be trusted, or None."""
    errors = int(np.sum(z.argmax(1) != labels))
    if errors < MIN_ERRORS:
        what = "no misclassified images" if errors == 0 else f"{errors} misclassified image"
        return (f"the validation split has {what} (at least {MIN_ERRORS} needed): its NLL has no interior "
                "minimum to fit, or none a held-out check can test")
    if fit.temperature <= T_BOUNDS[0] * EDGE_FACTOR or fit.temperature >= T_BOUNDS[1] / EDGE_FACTOR:
        return (f"the fitted T = {fit.temperature:.3g} sits at the edge of the search range {T_BOUNDS}: the range "
                "set it, not the data")
    return None


def out_of_fold_parts(right: np.ndarray, folds: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Indices of `folds` parts, mistakes and right images each dealt round-robin after a seeded shuffle, so every
    part holds its share of the mistakes."""
    right = np.asarray(right, bool)
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(~right)), rng.permutation(np.flatnonzero(right))])
    return [np.sort(dealt[k::folds]).astype(np.int64) for k in range(min(folds, len(dealt)))]


def held_out_gains(scores: np.ndarray, labels: np.ndarray, kind: str = "probabilities", folds: int = FOLDS,
                   seed: int = 0) -> np.ndarray:
    """Per image: its NLL at T = 1 minus its NLL at the T fitted on the folds that do not hold it (no refusal
    inside: the fit that would ship is what is judged)."""
    probs_like, labels = _check(scores, labels)
    z = log_scores(probs_like, kind)
    gains = np.zeros(len(labels))
    for part in out_of_fold_parts(z.argmax(1) == labels, folds, seed):
        rest = np.setdiff1d(np.arange(len(labels)), part)
        t = _fitted_t(z[rest], labels[rest]) if len(rest) else 1.0
        gains[part] = nll_each(z[part], labels[part]) - nll_each(z[part], labels[part], t)
    return gains


def lower_bound(values: np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                seed: int = 0) -> float:
    """One-sided `confidence` lower bound of the mean of `values`, from seeded bootstrap resamples."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(len(values), 1))  # bounded memory for large splits
    means = np.concatenate([values[rng.integers(0, len(values), (min(chunk, resamples - start), len(values)))]
                            .mean(axis=1) for start in range(0, resamples, chunk)])
    return float(np.quantile(means, 1.0 - confidence))


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature a model ships with, the raw fit it came from, and why T = 1 was kept if it was."""

    fit: TemperatureFit  # the unguarded fit on the whole validation split
    temperature: float  # what ships: fit.temperature, or 1.0
    out_of_fold_gain: float | None  # rule 3's mean held-out NLL gain per image; None when rules 1-2 refused
    kept_t1_because: str | None = None

    def applied_fit(self) -> TemperatureFit:
        """The fit as shipped (T = 1 and no NLL change when kept)."""
        if self.kept_t1_because is None:
            return self.fit
        return TemperatureFit(1.0, self.fit.nll_before, self.fit.nll_before, self.fit.count)


def choose_temperature(scores: np.ndarray, labels: np.ndarray, kind: str = "probabilities") -> TemperatureChoice:
    """The module docstring's rule: a fitted T, or T = 1 with the reason. Never a T the data cannot support."""
    probs_like, labels = _check(scores, labels)
    fit = fit_temperature(probs_like, labels, kind)
    refused = _refusal(log_scores(probs_like, kind), labels, fit)
    if refused:
        return TemperatureChoice(fit, 1.0, None, refused)
    gains = held_out_gains(probs_like, labels, kind)
    gain, bound = float(gains.mean()), lower_bound(gains)
    if bound <= 0:
        return TemperatureChoice(fit, 1.0, gain, f"the held-out NLL gain of a fitted T ({gain:+.4f} per image) is "
                                 f"not significantly positive ({100 * CONFIDENCE:g} % lower bound {bound:+.4f})")
    return TemperatureChoice(fit, fit.temperature, gain)


def calibration_summary(scores: np.ndarray, labels: np.ndarray, fit: TemperatureFit,
                        kind: str = "probabilities", bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The figures a run, a bundle and a model card record: T, and ECE/NLL before and after, on `scores`."""
    probs = apply_temperature(scores, 1.0, kind)
    calibrated = apply_temperature(scores, fit.temperature, kind)
    z = log_scores(scores, kind)
    labels = np.asarray(labels).astype(np.int64)
    return {"method": "temperature scaling", "temperature": fit.temperature, "fitted_on": fit.count,
            "bins": bins, "ece_before": expected_calibration_error(probs, labels, bins),
            "ece_after": expected_calibration_error(calibrated, labels, bins),
            "nll_before": negative_log_likelihood(z, labels), "nll_after": negative_log_likelihood(z, labels,
                                                                                                   fit.temperature)}


def undo_temperature(calibrated: np.ndarray, temperature: float | None) -> np.ndarray:
    """The probabilities before scaling, from ones scaled by `temperature`: scaling is p_k^(1/T) renormalised, so
    scaling by 1/T gives p back, and parity needs no second run with the scaling off."""
    if temperature is None or temperature == 1.0:
        return np.asarray(calibrated)
    return apply_temperature(np.asarray(calibrated, np.float64), 1.0 / float(temperature))


def ece_before_after(raw: np.ndarray, labels: np.ndarray, temperature: float | None,
                     bins: int = DEFAULT_BINS) -> dict[str, float | int | None]:
    """ECE of raw probabilities and of the same probabilities scaled by `temperature` (None: no scaling
    recorded, so both are the raw figure): the per-file calibration a parity report carries."""
    t = 1.0 if temperature is None else float(temperature)
    return {"temperature": temperature, "bins": bins, "images": int(len(np.asarray(labels).reshape(-1))),
            "ece_before": expected_calibration_error(raw, labels, bins),
            "ece_after": expected_calibration_error(apply_temperature(np.asarray(raw, np.float64), t), labels, bins)}
