"""Localisation metrics on synthetic maps whose values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.errors import ConfigError
from tumor_edge.runtime.explain.grid import cell_edges, cell_of, spread
from tumor_edge.runtime.explain.localisation import (
    Tally,
    chance_hit,
    energy_in_lesion,
    map_correlation,
    peak,
    pointing_hit,
    resize_mask,
    tolerance_px,
)


def _top_left(n: int = 4) -> np.ndarray:
    mask = np.zeros((n, n), bool)
    mask[: n // 2, : n // 2] = True
    return mask


def test_cells_cover_every_pixel_once_and_agree_with_cell_of():
    edges = cell_edges(299, 8)
    assert edges[0] == 0 and edges[-1] == 299 and len(edges) == 9
    owner = cell_of(299, 8)
    for i in range(8):
        assert np.all(owner[edges[i]:edges[i + 1]] == i)
    assert cell_edges(10, 3) == [0, 4, 7, 10]
    with pytest.raises(ConfigError):
        cell_edges(4, 5)


def test_spread_gives_each_pixel_its_cells_value():
    assert spread(np.array([[1.0, 2.0], [3.0, 4.0]]), (4, 4)).tolist() == [
        [1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_energy_in_lesion_by_hand():
    mask = _top_left()
    assert energy_in_lesion(np.array([[1.0, 0.0], [0.0, 0.0]]), mask) == 1.0
    assert energy_in_lesion(np.ones((2, 2)), mask) == 0.25  # uniform: the lesion's area share
    # positive parts only: 3 on the lesion cell, 1 off it, -1 ignored: 3*4 / (3*4 + 1*4)
    assert energy_in_lesion(np.array([[3.0, -1.0], [1.0, 0.0]]), mask) == 0.75
    assert energy_in_lesion(np.array([[-1.0, -2.0], [0.0, 0.0]]), mask) is None


def test_pointing_game_by_hand():
    mask = _top_left()
    assert pointing_hit(np.array([[2.0, 1.0], [0.0, 0.0]]), mask)
    assert not pointing_hit(np.array([[0.0, 1.0], [0.0, 0.0]]), mask, tolerance=0)
    assert not pointing_hit(np.ones((2, 2)), mask)  # flat: nothing stands out
    # one lesion pixel at (0, 0); the peak cell's centre of a 3x3 map over 10 px is pixel (5, 5): 7.07 px away
    point = np.zeros((10, 10), bool)
    point[0, 0] = True
    centre = np.zeros((3, 3))
    centre[1, 1] = 1.0
    assert peak(centre, (10, 10)) == (5, 5)
    assert not pointing_hit(centre, point, tolerance=7.0)
    assert pointing_hit(centre, point, tolerance=7.1)
    assert tolerance_px((96, 96)) == pytest.approx(4.8)
    assert tolerance_px((299, 280)) == pytest.approx(14.95)


def test_chance_is_the_share_of_pixels_near_the_lesion():
    point = np.zeros((10, 10), bool)
    point[5, 5] = True
    assert chance_hit(point, tolerance=1.0) == 0.05  # the pixel and its 4 neighbours
    assert chance_hit(point, tolerance=1.5) == 0.09  # and the diagonals
    assert chance_hit(np.ones((4, 4), bool)) == 1.0


def test_resize_mask_and_correlation():
    assert resize_mask(_top_left(4), (2, 2)).tolist() == [[True, False], [False, False]]
    a = np.array([[0.0, 1.0], [2.0, 5.0]])
    assert map_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    assert map_correlation(a, np.ones((2, 2))) is None


def test_tally_per_class_and_all():
    tally = Tally()
    mask = _top_left()
    tally.add("glioma", np.array([[1.0, 0.0], [0.0, 0.0]]), mask)  # hit, energy 1
    tally.add("glioma", np.array([[0.0, 1.0], [0.0, 0.0]]), mask, tolerance=0)  # miss, energy 0
    tally.add("pituitary", np.ones((2, 2)), mask)  # flat: miss, energy 0.25
    figures = tally.summary()
    assert figures["glioma"]["n"] == 2 and figures["glioma"]["pointing"] == 0.5 and figures["glioma"]["energy"] == 0.5
    assert figures["pituitary"]["pointing"] == 0.0 and figures["pituitary"]["energy"] == 0.25
    assert figures["all"]["n"] == 3 and figures["all"]["pointing"] == pytest.approx(1 / 3)
    assert figures["all"]["energy"] == pytest.approx(1.25 / 3)
