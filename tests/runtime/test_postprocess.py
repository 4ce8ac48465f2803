"""Post-processing settings: read from metadata fields, applied to probabilities and outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.calibration import apply_temperature
from tumor_edge.errors import ConfigError
from tumor_edge.runtime.postprocess import PostProcessing, calibrate, ood_scores, probability_problem, warnings_for

OOD = {"score": "mahalanobis", "threshold": 10.0, "centres": [[0.0, 0.0], [5.0, 5.0]], "tpr": 0.95}


def test_settings_from_fields_and_defaults():
    assert PostProcessing.from_fields() == PostProcessing()
    s = PostProcessing.from_fields({"temperature": 2.0}, OOD)
    assert s.temperature == 2.0 and s.has_ood and s.ood_threshold == 10.0


@pytest.mark.parametrize("calibration, ood, match", [
    ({"temperature": 0}, None, "calibration.temperature"),
    ({"temperature": "2"}, None, "calibration.temperature"),
    ({"temperature": 1e9}, None, "calibration.temperature"),
    ([], None, "'calibration' must be an object"),
    (None, {**OOD, "score": "energy"}, "ood.score"),
    (None, {**OOD, "centres": [[1, 2], [3]]}, "ood.centres"),
    (None, {**OOD, "centres": [[1, float("nan")]]}, "ood.centres"),
    (None, {**OOD, "threshold": -1}, "ood.threshold"),
    (None, {**OOD, "threshold": True}, "ood.threshold"),
])
def test_malformed_fields_are_config_errors(calibration, ood, match):
    with pytest.raises(ConfigError, match=match):
        PostProcessing.from_fields(calibration, ood)


def test_calibrate_and_score():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    s = PostProcessing.from_fields({"temperature": 2.0}, OOD)
    np.testing.assert_allclose(calibrate(probs, s), apply_temperature(probs, 2.0))
    assert calibrate(probs, PostProcessing()) is probs
    z = np.array([[0.0, 1.0], [20.0, 20.0]])
    np.testing.assert_allclose(ood_scores({"ood_features": z}, s), [1.0, 450.0])
    assert ood_scores({}, s) is None and ood_scores({"ood_features": z}, PostProcessing()) is None


def test_warnings_combine_input_checks_and_feature_distance():
    s = PostProcessing.from_fields(None, OOD)
    scan = np.zeros((32, 32, 3), np.uint8)
    scan[8:24, 8:24] = 120
    assert warnings_for(scan, 3.0, s) == []
    far = warnings_for(scan, 450.0, s)
    assert len(far) == 1 and far[0].startswith("unlike the training scans")
    blank = warnings_for(np.zeros((32, 32, 3), np.uint8), None, s)
    assert len(blank) == 1 and blank[0].startswith("blank")
    assert warnings_for(np.zeros((32, 32, 3), np.uint8), None, PostProcessing(input_checks=False)) == []


def test_probabilities_float32_and_8_bit_pass_raw_values_do_not():
    rng = np.random.default_rng(0)
    for classes in (2, 4, 10):
        logits = rng.normal(0, 4, (200, classes)).astype(np.float32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)  # float32 softmax
        eight_bit = np.round(probs * 256) / 256  # an int8 softmax's output grid (scale 1/256)
        assert probability_problem(probs) is None and probability_problem(eight_bit) is None
    assert "outside [0, 1]" in probability_problem([1.39e10] * 4)
    assert "outside [0, 1]" in probability_problem([-0.2, 0.6, 0.6])
    assert "summing to 0.5" in probability_problem([0.25, 0.25, 0.0, 0.0])
    assert probability_problem([float("nan"), 0.5, 0.5]) is None  # no label for it: the non-finite rule's
