"""The input checks of a decoded file, made in the decode worker that decoded it.

The checks (`ood_checks.input_warnings`: blank, noise, colour, no dark surround) cost 2.8 ms CPU an image at 299 px
(0.2 ms at 96 px; AMD Zen 5). Made after inference, on the thread that runs the model, they stalled the engine
for that long every image; made here, beside decoding, they run while the engine works on the batch before. Same
function, same model-sized pixels: the same findings as before, only earlier.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from tumor_edge.runtime.ood_checks import input_warnings

if TYPE_CHECKING:
    from tumor_edge.runtime.batch import _Decoded


def with_input_checks(decoded: _Decoded) -> _Decoded:
    """`decoded` with each frame's input-check findings (a failed decode is returned as it is)."""
    if decoded.failure is not None:
        return decoded
    return replace(decoded, checked=[input_warnings(pixels) for pixels, _, _ in decoded.pixels])
