"""Model-agnostic explanations through the runtime: a model that looks only at one quadrant is explained by a map
that points at that quadrant, for occlusion and RISE, for the fp32 file and its int8 form; the exact CAM is used
only where the model gives one with at least 4x4 cells; every map names its method."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.explain_models import one_quadrant_bundle, quadrant_rows
from tests.runtime.heatmap_models import make_heatmap_bundle
from tests.runtime.models import quadrant_image
from tumor_edge.errors import ConfigError
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.explain import METHODS, ExplainSettings, choose_method, energy_in_lesion, pointing_hit
from tumor_edge.runtime.explain import explain_prediction as explain

SIZE = 32


def _quadrant_mask(quadrant: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[quadrant_rows(quadrant, SIZE)] = True
    return mask


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("quadrants")
    return {q: one_quadrant_bundle(root / f"q{q}", q, SIZE, int8=True) for q in range(4)}


@pytest.mark.parametrize("quadrant", range(4))
@pytest.mark.parametrize("model_file", ["model_fp32.onnx", "model_int8.onnx"])
def test_occlusion_points_at_the_only_quadrant_the_model_reads(bundles, quadrant, model_file):
    classifier = Classifier.from_bundle(bundles[quadrant], model_file=model_file)
    pixels = quadrant_image(quadrant, SIZE)
    result = explain(classifier, pixels, quadrant, settings=ExplainSettings(grid=8))
    assert result.method == "occlusion" and result.map.shape == (8, 8)
    assert result.label == "occlusion 8x8"
    assert pointing_hit(result.map, _quadrant_mask(quadrant), tolerance=0)
    # Cells outside the quadrant change no input the model reads: no evidence there beyond rounding. The scan's own
    # score is computed in a batch of 1 and the occluded copies in batches of 16; an engine may sum the quadrant's
    # 768 products in another order for another batch size (float32: at most 768 * 2**-24 * |logit| with the logit
    # ~2.2, i.e. 1.0e-4 in log-odds; int8 accumulates exactly), while hiding one cell of the bright quadrant lowers
    # the logit by 0.01 * (220 - ~74) / 16 ~ 0.09.
    rounding = 768 * 2.0 ** -24 * 2.5 + 1e-6
    outside = np.ones((8, 8), bool)
    outside[quadrant_rows(quadrant, 8)] = False
    assert np.all(np.abs(result.map[outside]) <= rounding) and np.all(result.map[~outside] > 100 * rounding)
    assert energy_in_lesion(result.map, _quadrant_mask(quadrant)) >= 1 - 48 * rounding / (16 * 100 * rounding)


@pytest.mark.parametrize("quadrant", range(4))
def test_rise_points_at_the_only_quadrant_the_model_reads(bundles, quadrant):
    classifier = Classifier.from_bundle(bundles[quadrant], model_file="model_fp32.onnx")
    settings = ExplainSettings(method="rise", grid=4, masks=300, seed=quadrant)
    result = explain(classifier, quadrant_image(quadrant, SIZE), quadrant, settings=settings)
    assert result.method == "rise" and result.map.shape == (SIZE, SIZE)
    assert pointing_hit(result.map, _quadrant_mask(quadrant), tolerance=0)
    again = explain(classifier, quadrant_image(quadrant, SIZE), quadrant, settings=settings)
    assert np.array_equal(result.map, again.map)  # seeded masks: the same map


def test_the_exact_cam_is_used_where_the_model_has_one_of_4x4_cells_or_more(tmp_path):
    classifier = Classifier.from_bundle(make_heatmap_bundle(tmp_path / "cam", SIZE))
    prediction = classifier.predict(quadrant_image(1, SIZE))
    result = explain(classifier, quadrant_image(1, SIZE), prediction.index, prediction.outputs)
    assert result.method == "cam" and result.label == f"exact CAM {SIZE}x{SIZE}"
    assert pointing_hit(result.map, _quadrant_mask(1), tolerance=0)


@pytest.mark.parametrize("cells, expected", [((1, 1), "occlusion"), ((3, 8), "occlusion"), ((4, 4), "cam"),
                                             ((8, 8), "cam"), (None, "occlusion")])
def test_auto_takes_the_cam_only_when_it_can_point(cells, expected):
    outputs = {} if cells is None else {"heatmap": np.zeros((*cells, 4), np.float32)}
    assert choose_method("auto", outputs) == expected
    assert choose_method("rise", outputs) == "rise"


def test_methods_are_a_registry_and_bad_settings_are_one_line_errors(bundles):
    assert set(METHODS) == {"cam", "occlusion", "rise"}
    classifier = Classifier.from_bundle(bundles[0], model_file="model_fp32.onnx")
    with pytest.raises(ConfigError, match="no class-activation map"):
        explain(classifier, quadrant_image(0, SIZE), 0, settings=ExplainSettings(method="cam"))
    with pytest.raises(ConfigError, match="unknown explanation method"):
        explain(classifier, quadrant_image(0, SIZE), 0, settings=ExplainSettings(method="gradcam"))
    with pytest.raises(ConfigError, match="grid"):
        explain(classifier, quadrant_image(0, SIZE), 0, settings=ExplainSettings(grid=1))
