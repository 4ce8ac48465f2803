"""Does a map point at the lesion? The pointing game and the energy inside the lesion, where the truth is known.

- Pointing game (Zhang et al. 2016): the map's maximum falls inside the lesion or within `tolerance` pixels of it.
  The original used 15 px on ~300 px images, 5 % of the side; here the tolerance is TOLERANCE_FRACTION (5 %) of
  the longer side of the image the mask and map are compared on (4.8 px at 96 px, 15 px at 299 px). A cell map's
  points are its maximum cells' centre pixels: where several cells share the maximum, any of them on the lesion
  is a hit (the map does not say which it means); a flat map (no maximum stands out) is a miss.
- Energy in lesion: the share of the map's evidence, spread over the pixels cell by cell (`grid.spread`), that
  lies on lesion pixels, counted from the map's own minimum (see `energy_in_lesion`). 1.0: all the evidence is
  on the lesion; the lesion's area share: no better than a uniform map.
- Chance: the share of pixels within the tolerance of the lesion, which a point dropped at random would hit.
- Excluded: a lesion with no pixel left at the model's resolution (a lesion of a few pixels, resized down) cannot
  be pointed at; it is counted as excluded, not as a miss.

numpy only; the mask is brought to the model's resolution with the resize the runtime applies to the scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tumor_edge.errors import ConfigError
from tumor_edge.runtime.explain import cell_edges, spread

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
    """The pixels within `tolerance` pixels (Euclidean, centre to centre) of a lesion pixel. Offsets reach at most
    a side less one: a tolerance larger than the map reaches every pixel it can."""
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    h, w = mask.shape
    reach = int(np.floor(max(tolerance, 0.0)))
    for dy in range(-min(reach, h - 1), min(reach, h - 1) + 1):
        for dx in range(-min(reach, w - 1), min(reach, w - 1) + 1):
            if (dy or dx) and dy * dy + dx * dx <= tolerance * tolerance:
                src = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
                out[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)] |= src
    return out


def peaks(cell_map: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The pixels (row, column) a map points at: the centre of every cell holding its maximum; none for a flat
    map."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    if cell_map.ndim != 2 or not np.all(np.isfinite(cell_map)):
        raise ConfigError(f"an explanation map must be 2-D and finite, not {cell_map.shape}")
    if cell_map.max() == cell_map.min():
        return []
    rows, cols = cell_edges(shape[0], cell_map.shape[0]), cell_edges(shape[1], cell_map.shape[1])
    return [((rows[i] + rows[i + 1] - 1) // 2, (cols[j] + cols[j + 1] - 1) // 2)
            for i, j in zip(*np.nonzero(cell_map == cell_map.max()))]


def pointing_hit(cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """Whether a maximum of the map lies on the lesion or within `tolerance` px of it (default 5 % of the side)."""
    mask = np.asarray(mask, dtype=bool)
    points = peaks(cell_map, mask.shape)
    if not points:
        return False
    hit = near(mask, tolerance_px(mask.shape) if tolerance is None else tolerance)
    return any(bool(hit[point]) for point in points)


def energy_in_lesion(cell_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's evidence on lesion pixels, the evidence counted from the map's minimum.

    Each method puts its zero somewhere else: occlusion's is "hiding this changed nothing" (and its values may be
    negative), RISE's values are mean scores that never reach zero, a CAM's sit on a logit offset. Counting from
    zero would make the same map score differently after adding a constant, and methods incomparable. The map
    minus its own minimum is the evidence above the least the map shows anywhere: the share is unchanged by
    adding a constant or scaling, so the figure compares across methods. A flat map shows no evidence anywhere
    and scores what a uniform map would: the lesion's area share."""
    mask = np.asarray(mask, dtype=bool)
    values = spread(cell_map, mask.shape)
    shifted = values - values.min()
    total = float(shifted.sum())
    return float(mask.mean()) if total <= 0 else float(shifted[mask].sum() / total)


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
    """Pointing-game hits, energies and chance, kept per class, and the lesions excluded because none of their
    pixels is left at the map's resolution; `summary` gives the figures per class and all."""

    hits: dict[str, list[bool]] = field(default_factory=dict)
    energies: dict[str, list[float]] = field(default_factory=dict)
    chances: dict[str, list[float]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)

    def add(self, class_name: str, cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
        """Score one map against its lesion mask (at the map's resolution); False when the lesion has no pixel
        there and was excluded."""
        for kept in (self.hits, self.energies, self.chances):
            kept.setdefault(class_name, [])
        if not np.asarray(mask, dtype=bool).any():
            self.excluded[class_name] = self.excluded.get(class_name, 0) + 1
            return False
        self.hits[class_name].append(pointing_hit(cell_map, mask, tolerance))
        self.energies[class_name].append(energy_in_lesion(cell_map, mask))
        self.chances[class_name].append(chance_hit(mask, tolerance))
        return True

    @staticmethod
    def _figures(hits: list[bool], energies: list[float], chances: list[float], excluded: int) -> dict[str, Any]:
        n = len(hits)
        return {"n": n, "excluded": excluded, "pointing": sum(hits) / n if n else None,
                "energy": float(np.mean(energies)) if n else None,
                "chance": float(np.mean(chances)) if n else None}

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {name: self._figures(self.hits[name], self.energies[name], self.chances[name],
                                   self.excluded.get(name, 0)) for name in self.hits}
        out["all"] = self._figures([h for v in self.hits.values() for h in v],
                                   [e for v in self.energies.values() for e in v],
                                   [c for v in self.chances.values() for c in v], sum(self.excluded.values()))
        return out
