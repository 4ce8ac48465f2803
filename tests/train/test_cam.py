"""Class activation maps as a second Keras output: exact (checked against numpy), pointing at the lesion, and
refused for heads that have no exact map. Uses the tiny GAP + dense CNN of tests/trust_models.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trust_models import BLOB_SIZE, blob_cnn, blob_images
from tumor_edge.modelside.cam import HEATMAP_ROLE, NoCamHeadError, find_cam_head, trust_model

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def cnn():
    return blob_cnn()[0]


@pytest.fixture(scope="module")
def fresh():
    return blob_images(64, seed=11)


def test_heatmap_matches_numpy_from_conv_features_and_dense_weights(cnn, fresh):
    x = fresh.pixels.astype(np.float32)
    probs, cam = trust_model(cnn).predict(x, verbose=0)
    features = keras.Model(cnn.inputs, find_cam_head(cnn).features).predict(x, verbose=0)
    kernel, bias = cnn.get_layer("probabilities").get_weights()
    h, w = features.shape[1:3]
    expected = features @ kernel + bias
    assert cam.shape == (len(x), h, w, 2) == (len(x), BLOB_SIZE // 2, BLOB_SIZE // 2, 2)
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-5)
    # The spatial mean of each map is the class logit: softmax of it gives the model's own probabilities.
    logits = cam.mean(axis=(1, 2))
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-5)
    np.testing.assert_allclose(probs, cnn.predict(x, verbose=0), atol=1e-6)  # scores unchanged


def test_planted_lesion_lies_in_the_hottest_region_of_its_map(cnn, fresh):
    _, cam = trust_model(cnn).predict(fresh.pixels.astype(np.float32), verbose=0)
    hits, lesions = 0, np.flatnonzero(fresh.labels == 1)
    for i in lesions:
        lesion_map = cam[i, ..., 1]
        r, c = fresh.centres[i] // 2  # map cells are 2x2 pixels
        # "hottest region": the cells within 70 % of the map's range from its maximum
        hot = lesion_map >= lesion_map.min() + 0.7 * (lesion_map.max() - lesion_map.min())
        hits += bool(hot[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any()) and hot.mean() < 0.2
    assert hits / len(lesions) >= 0.9, f"lesion inside the hot region in {hits} of {len(lesions)} scans"


def test_head_with_softmax_layer_after_linear_dense_is_accepted(cnn):
    # By type, not by name: Keras numbers default layer names per process, so earlier tests change them.
    pooling = next(layer for layer in cnn.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    logits = keras.layers.Dense(2, name="linear_scores")(pooling.output)
    model = keras.Model(cnn.inputs, keras.layers.Softmax()(logits))
    assert find_cam_head(model).activation == "softmax"
    assert trust_model(model).outputs[1].shape[1:] == (BLOB_SIZE // 2, BLOB_SIZE // 2, 2)


@pytest.mark.parametrize("head", ["flatten", "two_dense", "max_pool", "sigmoid"])
def test_foreign_head_gets_a_clear_message(head):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    if head == "flatten":
        x = keras.layers.Flatten()(x)
    elif head == "max_pool":
        x = keras.layers.GlobalMaxPooling2D()(x)
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    if head == "two_dense":
        x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="sigmoid" if head == "sigmoid" else "softmax")(x)
    with pytest.raises(NoCamHeadError, match="not global average pooling followed by one dense layer"):
        trust_model(keras.Model(inputs, outputs))


def test_output_named_for_its_role(cnn):
    assert trust_model(cnn).layers[-1].name == HEATMAP_ROLE
