"""Does a map point at the lesion? The pointing game and the energy inside the lesion, where the truth is known.

- Pointing game (Zhang et al. 2016): the map's maximum falls inside the lesion or within `tolerance` pixels of it.
  The original used 15 px on ~300 px images, 5 % of the side; here the tolerance is TOLERANCE_FRACTION (5 %) of
  the longer side of the image the mask and map are compared on (4.8 px at 96 px, 15 px at 299 px). A cell map's
  point is its maximum cell's centre pixel; a flat map (no maximum stands out) is a miss.
- Energy in lesion: the share of the map's positive values, spread over the pixels cell by cell
  (`grid.spread`), that lies on lesion pixels. 1.0: all the evidence is on the lesion; the lesion's area share: no
  better than a uniform map.
- Chance: the share of pixels within the tolerance of the lesion, which a point dropped at random would hit.

numpy only; the mask is brought to the model's resolution with the resize the runtime applies to the scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tumor_edge.errors import ConfigError
from tumor_edge.runtime.explain.grid import cell_edges, spread

TOLERANCE_FRACTION = 0.05


def tolerance_px(shape: tuple[int, int]) -> float:
    return TOLERANCE_FRACTION * max(shape)


def resize_mask(mask: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """A bool (H, W) mask at (height, width), resized as the scan was (the runtime's filter) and thresholded at
    half coverage."""
    height, width = size
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), resample)
    return np.asarray(image) >= 0.5


def near(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """The pixels within `tolerance` pixels (Euclidean, centre to centre) of a lesion pixel."""
    mask = np.asarray(mask, dtype=bool)
    reach = int(np.floor(tolerance))
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if (dy or dx) and dy * dy + dx * dx <= tolerance * tolerance:
                src = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
                out[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)] |= src
    return out


def peak(cell_map: np.ndarray, shape: tuple[int, int]) -> tuple[int, int] | None:
    """The pixel (row, column) a map points at: its maximum cell's centre; None for a flat map."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    if cell_map.ndim != 2 or not np.all(np.isfinite(cell_map)):
        raise ConfigError(f"an explanation map must be 2-D and finite, not {cell_map.shape}")
    if cell_map.max() == cell_map.min():
        return None
    i, j = np.unravel_index(int(np.argmax(cell_map)), cell_map.shape)
    rows, cols = cell_edges(shape[0], cell_map.shape[0]), cell_edges(shape[1], cell_map.shape[1])
    return (rows[i] + rows[i + 1] - 1) // 2, (cols[j] + cols[j + 1] - 1) // 2


def pointing_hit(cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """Whether the map's maximum lies on the lesion or within `tolerance` px of it (default 5 % of the side)."""
    mask = np.asarray(mask, dtype=bool)
    point = peak(cell_map, mask.shape)
    if point is None:
        return False
    tolerance = tolerance_px(mask.shape) if tolerance is None else tolerance
    return bool(near(mask, tolerance)[point])


def energy_in_lesion(cell_map: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of the map's positive energy on lesion pixels; None when the map has no positive value."""
    mask = np.asarray(mask, dtype=bool)
    positive = np.clip(spread(cell_map, mask.shape), 0.0, None)
    total = float(positive.sum())
    return None if total <= 0 else float(positive[mask].sum() / total)


def chance_hit(mask: np.ndarray, tolerance: float | None = None) -> float:
    """The pointing game a point dropped uniformly at random would score on this mask."""
    mask = np.asarray(mask, dtype=bool)
    tolerance = tolerance_px(mask.shape) if tolerance is None else tolerance
    return float(near(mask, tolerance).mean())


def map_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps of one scan (e.g. the int8 file's and the fp32 file's); None if flat."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError(f"maps of different shapes cannot be compared ({a.shape} vs {b.shape})")
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class Tally:
    """Pointing-game hits, energies and chance, kept per class; `summary` gives the figures per class and all."""

    hits: dict[str, list[bool]] = field(default_factory=dict)
    energies: dict[str, list[float]] = field(default_factory=dict)
    chances: dict[str, list[float]] = field(default_factory=dict)

    def add(self, class_name: str, cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> None:
        self.hits.setdefault(class_name, []).append(pointing_hit(cell_map, mask, tolerance))
        energy = energy_in_lesion(cell_map, mask)
        self.energies.setdefault(class_name, []).append(0.0 if energy is None else energy)
        self.chances.setdefault(class_name, []).append(chance_hit(mask, tolerance))

    @staticmethod
    def _figures(hits: list[bool], energies: list[float], chances: list[float]) -> dict[str, Any]:
        n = len(hits)
        return {"n": n, "pointing": sum(hits) / n if n else None,
                "energy": float(np.mean(energies)) if n else None,
                "chance": float(np.mean(chances)) if n else None}

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {name: self._figures(self.hits[name], self.energies[name], self.chances[name]) for name in self.hits}
        out["all"] = self._figures([h for v in self.hits.values() for h in v],
                                   [e for v in self.energies.values() for e in v],
                                   [c for v in self.chances.values() for c in v])
        return out
