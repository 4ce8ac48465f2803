"""Localisation metrics on synthetic maps whose values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.errors import ConfigError
from tumor_edge.runtime.explain import (
    Tally,
    cell_edges,
    cell_of,
    chance_hit,
    energy_in_lesion,
    map_correlation,
    near,
    peaks,
    pointing_hit,
    resize_mask,
    spread,
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
    assert energy_in_lesion(np.ones((2, 2)), mask) == 0.25  # flat: the lesion's area share, as a uniform map
    # counted from the minimum (-1): 4 on the lesion cell, 0, 2 and 1 off it, 4 px each: 4*4 / (4*4 + 2*4 + 1*4)
    assert energy_in_lesion(np.array([[3.0, -1.0], [1.0, 0.0]]), mask) == pytest.approx(4 / 7)
    assert energy_in_lesion(np.array([[-1.0, -2.0], [0.0, 0.0]]), mask) == pytest.approx(1 / 5)


def test_energy_in_lesion_is_comparable_across_methods_whose_zero_differs():
    """An occlusion-like map (signed, zero where hiding changed nothing) and the same evidence as a RISE-like map
    (mean scores on an offset) or a scaled CAM score the same: the figure does not depend on where 0 sits."""
    mask = _top_left(8)
    occlusion = np.array([[0.9, 0.1, 0.0, -0.1], [0.4, 0.0, 0.0, 0.0], [0.0, 0.0, -0.2, 0.0], [0.0, 0.1, 0.0, 0.0]])
    share = energy_in_lesion(occlusion, mask)
    # from the minimum (-0.2): 2.2 on the lesion's 4 cells of 4.4 in all (1.2 + 16 * 0.2)
    assert share == pytest.approx(2.2 / 4.4)
    for same in (occlusion + 5.0, 3.0 * occlusion + 0.7, occlusion - 2.0):
        assert energy_in_lesion(same, mask) == pytest.approx(share)


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
    assert peaks(centre, (10, 10)) == [(5, 5)]
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
    assert figures["all"]["excluded"] == 0
    assert figures["glioma"]["n"] == 2 and figures["glioma"]["pointing"] == 0.5 and figures["glioma"]["energy"] == 0.5
    assert figures["pituitary"]["pointing"] == 0.0 and figures["pituitary"]["energy"] == 0.25
    assert figures["all"]["n"] == 3 and figures["all"]["pointing"] == pytest.approx(1 / 3)
    assert figures["all"]["energy"] == pytest.approx(1.25 / 3)


def test_tolerance_larger_than_a_side_reaches_what_it_can():
    """An 8 x 200 map: 5 % of the longer side is 10 px, more than the 8 rows; every row within reach is near."""
    mask = np.zeros((8, 200), bool)
    mask[0, 100] = True
    close = near(mask, 10.0)
    assert close[7, 100] and close[0, 90] and close[0, 110] and not close[0, 89] and not close[7, 92]
    assert close[7, 93]  # 7^2 + 7^2 = 98 <= 100 < 7^2 + 8^2
    cell_map = np.zeros((2, 20))
    cell_map[1, 10] = 1.0  # centre pixel (5, 104): 4.1 px from the lesion
    assert pointing_hit(cell_map, mask) and chance_hit(mask) == pytest.approx(close.mean())
    assert near(mask, 1000.0).all()


def test_any_tied_maximum_on_the_lesion_is_a_hit():
    """Two cells share the maximum, the second (in raster order) on the lesion: a hit, whatever the order."""
    mask = np.zeros((4, 4), bool)
    mask[2:, 2:] = True
    tied = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert peaks(tied, (4, 4)) == [(0, 0), (2, 2)]
    assert pointing_hit(tied, mask, tolerance=0) and pointing_hit(tied[::-1, ::-1], mask, tolerance=0)
    assert not pointing_hit(np.array([[1.0, 1.0], [0.0, 0.0]]), mask, tolerance=0)


def test_lesions_lost_at_the_models_resolution_are_excluded_and_counted():
    """A 3-pixel lesion on a 256 px scan has no pixel left at 96 px (under half of each 2.67 px cell): it cannot be
    pointed at, so it is excluded and counted, not a miss at chance 0."""
    small = np.zeros((256, 256), bool)
    small[100, 100:103] = True
    lost = resize_mask(small, (96, 96))
    assert not lost.any()
    large = resize_mask(np.pad(np.ones((64, 64), bool), ((0, 192), (0, 192))), (96, 96))
    tally = Tally()
    hit = np.zeros((4, 4))
    hit[0, 0] = 1.0
    assert tally.add("glioma", hit, large) and not tally.add("glioma", hit, lost)
    assert not tally.add("pituitary", hit, lost)
    figures = tally.summary()
    assert figures["glioma"] == {"n": 1, "excluded": 1, "pointing": 1.0, "energy": pytest.approx(1.0),
                                 "chance": pytest.approx(chance_hit(large))}
    assert figures["pituitary"]["n"] == 0 and figures["pituitary"]["excluded"] == 1
    assert figures["all"]["n"] == 1 and figures["all"]["excluded"] == 2 and figures["all"]["pointing"] == 1.0
