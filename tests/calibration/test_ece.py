"""ECE and the per-file calibration figures parity reports, checked against computations by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.calibration import apply_temperature, expected_calibration_error
from tumor_edge.calibration.plots import reliability_grid
from tumor_edge.calibration.temperature import ece_before_after, undo_temperature


def test_ece_on_known_numbers():
    # Two images at confidence 0.95 (one right), two at 0.65 (both right): bins (0.933, 1] and (0.6, 0.667].
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]])
    labels = np.array([0, 1, 0, 1])
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.65| * 2/4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)


def test_ece_before_after_against_a_direct_computation():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]])
    labels = np.array([0, 1, 0, 1])
    figures = ece_before_after(probs, labels, 2.0)
    # T = 2: p^(1/2) renormalised. 0.95 -> 0.8134 (bin 13: (0.8, 0.867]), 0.65 -> 0.5768 (bin 8: (0.533, 0.6]).
    hi = np.sqrt(0.95) / (np.sqrt(0.95) + np.sqrt(0.05))
    lo = np.sqrt(0.65) / (np.sqrt(0.65) + np.sqrt(0.35))
    assert figures == {"temperature": 2.0, "bins": 15, "images": 4, "ece_before": pytest.approx(0.4),
                       "ece_after": pytest.approx(0.5 * abs(0.5 - hi) + 0.5 * abs(1.0 - lo))}
    none = ece_before_after(probs, labels, None)
    assert none["ece_before"] == pytest.approx(0.4) and none["ece_after"] == pytest.approx(0.4)
    assert none["temperature"] is None


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.7, 12.0])
def test_undo_temperature_gives_the_raw_probabilities_back(temperature):
    """Parity scores a file's raw calibration from the scaled float32 probabilities the runtime returned."""
    rng = np.random.default_rng(0)
    raw = rng.dirichlet(np.full(4, 0.3), size=200)
    scaled = apply_temperature(raw.astype(np.float32), temperature)
    np.testing.assert_allclose(undo_temperature(scaled, temperature), raw, atol=2e-5)
    assert expected_calibration_error(undo_temperature(scaled, temperature), raw.argmax(1) * 0) == pytest.approx(
        expected_calibration_error(raw, raw.argmax(1) * 0), abs=1e-5)


def test_reliability_grid_writes_one_png(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    raw = rng.dirichlet(np.ones(3), size=60)
    path = reliability_grid([("a.onnx", raw, 1.5), ("b.tflite", raw, None)], labels, tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
