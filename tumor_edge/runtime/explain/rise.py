"""RISE (Petsiuk et al. 2018): random smooth masks, each weighted by the class score it leaves.

N masks are drawn from a seeded generator (the same seed, the same masks, the same map): a (grid, grid) grid of
cells kept with probability p, upsampled bilinearly to a cell larger than the scan and cropped at a random shift,
so its edges fall anywhere. saliency(x) = sum_i (s_i - mean s) m_i(x) / (N p), with s_i the class's log-odds on
the scan blended with the baseline colour by mask i. Centring the scores removes the constant every pixel would
share. Cost: N inferences per scan, batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from tumor_edge.runtime.explain.scores import baseline_value, class_scores


def rise_masks(count: int, grid: int, shape: tuple[int, int], keep: float, seed: int) -> np.ndarray:
    """(count, H, W) float32 masks in [0, 1]."""
    rng = np.random.default_rng(seed)
    height, width = shape
    cell_h, cell_w = -(-height // grid), -(-width // grid)
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    masks = np.empty((count, height, width), np.float32)
    for k in range(count):
        small = (rng.random((grid, grid)) < keep).astype(np.float32)
        big = np.asarray(Image.fromarray(small, mode="F").resize((up_w, up_h), Image.Resampling.BILINEAR))
        dy, dx = int(rng.integers(cell_h)), int(rng.integers(cell_w))
        masks[k] = big[dy:dy + height, dx:dx + width]
    return masks


def rise_map(classifier: Any, pixels: np.ndarray, class_index: int, grid: int = 8, masks: int = 256,
             keep: float = 0.5, seed: int = 0, batch_size: int = 16, baseline: str | float = "mean") -> np.ndarray:
    """(H, W) float32 saliency of `class_index` at the scan's resolution."""
    image = np.asarray(pixels, dtype=np.float32)
    fill = baseline_value(image, baseline)
    shape = image.shape[:2]
    drawn = rise_masks(masks, grid, shape, keep, seed)
    scores = []
    for start in range(0, masks, batch_size):
        chunk = drawn[start:start + batch_size, ..., None]
        scores.append(class_scores(classifier, image * chunk + fill * (1 - chunk), class_index, batch_size))
    values = np.concatenate(scores)
    centred = values - values.mean()
    total = np.tensordot(centred, drawn, axes=1)
    return (total / (masks * keep)).astype(np.float32)
