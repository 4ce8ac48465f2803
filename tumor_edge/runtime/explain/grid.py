"""The cell grid explanations share: which pixels each cell of a (g_h, g_w) map covers, and a map spread back
over the pixels cell by cell.

Cell i of n pixels in g cells covers rows ceil(i*n/g) .. ceil((i+1)*n/g)-1, so pixel r lies in cell r*g//n: the
occluder of a cell, the map's pixels and the localisation metrics agree on the same boundaries, also when n is not
a multiple of g (299 px in 8 cells).
"""

from __future__ import annotations

import numpy as np

from tumor_edge.errors import ConfigError


def cell_edges(n: int, cells: int) -> list[int]:
    """The cells + 1 pixel boundaries of `cells` cells over `n` pixels (each cell at least one pixel)."""
    if not 1 <= cells <= n:
        raise ConfigError(f"a grid of {cells} cells does not fit {n} pixels (1 to {n})")
    return [-(-i * n // cells) for i in range(cells + 1)]


def cell_of(n: int, cells: int) -> np.ndarray:
    """The cell index of each of `n` pixels."""
    return (np.arange(n) * cells) // n


def spread(cell_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (g_h, g_w) map as (H, W) pixels, each pixel holding its cell's value (no interpolation: a cell's value
    is what the method measured for exactly those pixels). A map already at (H, W) passes through."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    height, width = shape
    if cell_map.shape == (height, width):
        return cell_map
    if cell_map.ndim != 2:
        raise ConfigError(f"an explanation map must be 2-D, not {cell_map.shape}")
    return cell_map[np.ix_(cell_of(height, cell_map.shape[0]), cell_of(width, cell_map.shape[1]))]
