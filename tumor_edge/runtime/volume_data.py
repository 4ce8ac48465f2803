"""The `Volume` a volume reader gives and slicing takes: stored values in RAS voxel order with the modality
scaling beside them. Plain data, so the readers and the slicing need not import each other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """A volume ready to slice: stored values in RAS voxel order, `values = stored * slope + intercept` (slope
    and intercept broadcast against `stored`: per file for a DICOM series), voxel sizes in mm (RAS order)."""

    source: str
    stored: np.ndarray  # (X, Y, Z) in RAS order; a view of what was read
    spacing: tuple[float, float, float]
    slope: np.ndarray | float = 1.0
    intercept: np.ndarray | float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings found while reading (logged once per volume)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.stored.shape[0], self.stored.shape[1], self.stored.shape[2]

    def values(self, index: tuple) -> np.ndarray:
        """Modality values (float32) of `stored[index]`."""
        part = self.stored[index].astype(np.float32)
        slope, intercept = (np.broadcast_to(np.asarray(v, dtype=np.float32), self.stored.shape)[index]
                            for v in (self.slope, self.intercept))
        return part * slope + intercept


__all__ = ["Volume"]
