"""Two guards on the model's side: it must run before the server listens, and what it gives must be
probabilities before they are shown as such.

A bundle whose model cannot run (outputs of the wrong shape, an engine error) would start and answer every request
500; it is run once on a blank image first, and refused with one line before the port opens. A model can also
run and still give values that are no probabilities (a logit model described as `probabilities`, a broken export:
1.39e10 was seen): the class scores of every answer are checked to be finite, in [0, 1] and summing to 1 before
the server reports them.

The tolerance follows from the arithmetic that makes the scores. A float32 softmax (or temperature scaling) gives
each value within a few float32 ulps of the true one, so the sum of `n` values is off by at most ~n * 4 ulps; an
8-bit quantized softmax (a full-integer LiteRT model) gives each value within half a step of 1/256. The bound
allows both, per class: n * (2**-9 + 4 * 2**-23). Anything further off is not a distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tumor_edge.errors import ModelError, first_line

FLOAT32_SLACK = 4 * 2.0**-23  # a few float32 ulps at 1.0, per value
QUANTIZED_SLACK = 2.0**-9  # half a step of an 8-bit output quantized to 1/256


def sum_tolerance(classes: int) -> float:
    return classes * (QUANTIZED_SLACK + FLOAT32_SLACK)


def probability_problem(values: Sequence[float]) -> str | None:
    """Why `values` (one image's class scores) are not a probability distribution, or None when they are."""
    row = np.asarray(values, dtype=np.float64)
    if row.size == 0:
        return "no class scores"
    if not np.all(np.isfinite(row)):
        return "not finite (NaN or infinite)"
    low, high, total = float(row.min()), float(row.max()), float(row.sum())
    if low < -FLOAT32_SLACK or high > 1 + FLOAT32_SLACK:
        return f"values from {low:.3g} to {high:.3g}, outside [0, 1]"
    if abs(total - 1) > sum_tolerance(row.size):
        return f"values summing to {total:.6g}, not 1"
    return None


def check_runs(classifier) -> None:
    """Run the model once on a blank image at its input size; a one-line ModelError naming the model when it
    fails or gives no probabilities. Also warms the engine, so the first client is not the one who waits."""
    from tumor_edge.runtime import SCORES

    spec = classifier.preprocessing
    blank = np.zeros((1, spec.height, spec.width, 3), np.uint8)
    path = classifier.backend.path
    try:
        scores = classifier.infer_outputs(blank)[SCORES]
    except ModelError:
        raise
    except Exception as err:  # the engine's own error: one line, not a traceback
        raise ModelError(f"the model does not run on a blank image ({first_line(err)})", path) from err
    problem = probability_problem(scores[0])
    if problem is not None:
        raise ModelError(f"the model's class scores for a blank image are not probabilities ({problem}); check "
                         f"the bundle's output type", path)
