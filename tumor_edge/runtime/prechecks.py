"""The input checks of a decoded file, made in the decode worker that decoded it.

The checks (`ood_checks.input_warnings`: blank, noise, colour, no dark surround) cost 2.8 ms CPU an image at 299 px
(0.2 ms at 96 px; AMD Zen 5). Made after inference, on the thread that runs the model, they stalled the engine
for that long every image; made in the decode workers, they run while the engine works on the batch before. Same
function, same model-sized pixels: the same findings as before, only earlier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tumor_edge.runtime.ood_checks import input_warnings


def input_findings(frames: Sequence[tuple[np.ndarray, int | None, int | None]]) -> list[list[str]]:
    """Each decoded frame's input-check findings (empty: nothing found), from its model-sized uint8 pixels."""
    return [input_warnings(pixels) for pixels, _, _ in frames]
