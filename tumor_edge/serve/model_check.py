"""The model must run before the server listens: a bundle whose model cannot run (outputs of the wrong shape, an
engine error, scores that are no probabilities) would start and answer every request 500. It is run once on a
blank image through the runtime's own prediction stages, and refused with one line before the port opens."""

from __future__ import annotations

import numpy as np

from tumor_edge.errors import ModelError, first_line


def check_runs(classifier) -> None:
    """Run the model once on a blank image at its input size; a one-line ModelError naming the model when it
    fails, gives scores that are no probabilities (the runtime's one rule), or no number at all. Also warms the
    engine, so the first client is not the one who waits."""
    spec = classifier.preprocessing
    blank = np.zeros((1, spec.height, spec.width, 3), np.uint8)
    path = classifier.backend.path
    try:
        (result,) = classifier.predictions(blank, [("a blank image", None, None)])
    except ModelError:
        raise
    except Exception as err:  # the engine's own error: one line, not a traceback
        raise ModelError(f"the model does not run on a blank image ({first_line(err)})", path) from err
    if not result.ok:
        raise result.exception()
