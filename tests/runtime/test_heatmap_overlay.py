"""Overlay PNGs on the device side: the hot cell of a map lands red where it is, names are safe, nothing
is overwritten without force, and the logits come back from the maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tumor_edge.errors import ConfigError, OutputExistsError
from tumor_edge.runtime.explain import (
    class_map,
    overlay,
    overlay_name,
    write_overlay,
)


def test_hot_cell_is_red_where_it_is_and_cold_cells_blue():
    scan = np.full((80, 80, 3), 60, np.uint8)
    cam = np.zeros((8, 8, 2), np.float32)
    cam[1, 6, 1] = 5.0  # class 1 evidence in row 1, column 6
    out = np.asarray(overlay(scan, class_map(cam, 1), alpha=1.0)).astype(int)
    hot = out[15, 65]  # centre of cell (1, 6) at 10 px a cell
    cold = out[70, 10]
    assert hot[0] >= 120 and hot[1] < 60 and hot[2] < 60, hot  # the ramp ends in dark red
    assert cold[2] > 120 and cold[0] < 30, cold
    assert np.unravel_index(np.argmax(out[..., 0] - out[..., 2]), (80, 80)) in {(r, c) for r in range(10, 21)
                                                                                  for c in range(60, 71)}


def test_write_overlay_refuses_to_overwrite(tmp_path):
    scan = np.zeros((40, 40, 3), np.uint8)
    cam = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    path = write_overlay(tmp_path / "a.png", scan, cam, 2, "glioma 0.91")
    image = Image.open(path)
    assert image.format == "PNG" and image.height > 40 and "research tool" in image.text["Disclaimer"]
    with pytest.raises(OutputExistsError):
        write_overlay(path, scan, cam, 2, "again")
    write_overlay(path, scan, cam, 0, "again", force=True)


def test_overlay_names_are_safe_and_unique():
    assert overlay_name("/x/../scan one;rm -rf.dcm", 3, frame=2) == "00003_scan_one_rm_-rf_f2_heatmap.png"
    assert overlay_name(None, 0) == "00000_image_heatmap.png"
    assert overlay_name("/a/.hidden.png", 1) == "00001_hidden_heatmap.png"
    assert overlay_name("/a/s.png", 1) != overlay_name("/b/s.png", 2)


def test_a_class_the_heatmap_does_not_have_is_a_config_error():
    cam = np.random.default_rng(1).normal(size=(2, 3, 3, 4))
    with pytest.raises(ConfigError, match="no class 4"):
        class_map(cam[0], 4)
