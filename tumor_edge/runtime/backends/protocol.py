"""What every inference engine offers the rest of tumor-edge: the complete backend protocol.

The Classifier, export's parity, bench and verify use only these members, so a new engine is one module that
implements them (its class named `BACKEND` there) plus its row in the format table (contracts/formats.py), and
no caller needs `getattr` to find out what a backend can do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """One loaded model file, ready to run float32 NHWC batches in the model's input scale."""

    name: str  # the engine: a key of tumor_edge.contracts.formats.ENGINES
    path: Path  # the model file the caller asked for
    loaded_path: Path  # the file whose bytes run: `path`
    input_shape: list  # the declared input shape; ints, or None/str where dynamic
    output_names: list[str]  # every model output, in model order (what `run` returns, in the same order)
    providers: list[str]  # what executes it, in priority order (onnxruntime execution providers; [] for LiteRT)
    missing_providers: list[str]  # providers the caller asked for that this installation lacks

    def input_hw(self) -> tuple[int | None, int | None]:
        """The (height, width) the model file declares, None where dynamic."""
        ...

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """float32 (N, H, W, 3) -> every output as float32, in `output_names` order."""
        ...

    def metadata_props(self) -> dict[str, str]:
        """Key/value metadata the model file carries ({} for formats without any)."""
        ...


def hw_of(shape: list) -> tuple[int | None, int | None]:
    """(height, width) of an NHWC shape, None for dynamic or non-image dimensions."""
    if len(shape) != 4:
        return (None, None)
    h, w = shape[1], shape[2]
    return (h if isinstance(h, int) and h > 0 else None, w if isinstance(w, int) and w > 0 else None)
