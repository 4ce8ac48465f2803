"""Occlusion sensitivity (Zeiler & Fergus 2014): hide one grid cell at a time, see how far the class's score falls.

For a (g, g) grid the scan is run g*g + 1 times (batched): map[i, j] = score(scan) - score(scan with cell (i, j)
set to the baseline colour), in log-odds. Positive: the cell held evidence for the class; about 0: the model
did not look there. Any model that gives class scores can be explained this way (int8 files, TFLite, foreign ONNX
models without a class-activation head); the cost is g*g + 1 inferences per scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from tumor_edge.runtime.explain.grid import cell_edges
from tumor_edge.runtime.explain.scores import baseline_value, class_scores


def occluded(pixels: np.ndarray, grid: int, fill: np.ndarray) -> Iterator[np.ndarray]:
    """The scan with each cell hidden in turn, row by row (float32 (H, W, 3) each)."""
    height, width = pixels.shape[:2]
    rows, cols = cell_edges(height, grid), cell_edges(width, grid)
    for i in range(grid):
        for j in range(grid):
            image = pixels.astype(np.float32, copy=True)
            image[rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = fill
            yield image


def occlusion_map(classifier: Any, pixels: np.ndarray, class_index: int, grid: int = 8, batch_size: int = 16,
                  baseline: str | float = "mean") -> np.ndarray:
    """(grid, grid) float32: how much hiding each cell lowers `class_index`'s log-odds."""
    pixels = np.asarray(pixels)
    fill = baseline_value(pixels.astype(np.float32), baseline)
    base = class_scores(classifier, pixels[None].astype(np.float32), class_index, 1)[0]
    drops = []
    batch: list[np.ndarray] = []
    for image in occluded(pixels, grid, fill):
        batch.append(image)
        if len(batch) == batch_size:
            drops.append(base - class_scores(classifier, np.stack(batch), class_index, batch_size))
            batch = []
    if batch:
        drops.append(base - class_scores(classifier, np.stack(batch), class_index, batch_size))
    return np.concatenate(drops).reshape(grid, grid).astype(np.float32)
