"""The class is in the pixels: a small CNN, trained briefly on demo data from one volume, beats chance clearly on
scans from the other (held-out) volume. Cheap stand-in for the demo's own InceptionV3 figure."""

from __future__ import annotations

import numpy as np
import pytest

from tests.demo.manifest import read_manifest
from tumor_edge.data.dataset import discover, load_pixels
from tumor_edge.demo.anatomy import builtin_volumes
from tumor_edge.demo.generate import DemoDataConfig, generate
from tumor_edge.runtime.preprocess import Preprocessing

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(len(builtin_volumes()) < 2, reason="needs MNI152 (nilearn) and Colin27 "
                                                                    "(mricron-data) for a held-out volume")]


def _small_cnn(size: int, classes: int):
    import keras

    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, -1)(inputs)
    for filters in (16, 32, 64, 96):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_a_small_cnn_learns_the_classes_across_volumes(tmp_path):
    import keras

    root = tmp_path / "learn"
    generate(DemoDataConfig(root, per_class=160, size=96, seed=4, show_progress=False))
    rows = read_manifest(root)
    assert {r["volume"] for r in rows if r["split"] == "Testing"}.isdisjoint(
        {r["volume"] for r in rows if r["split"] == "Training"})
    index = discover(root)
    spec = Preprocessing(80, 80)
    train = load_pixels(index.train, spec, show_progress=False)
    test = load_pixels(index.test, spec, show_progress=False)
    keras.utils.set_random_seed(0)
    model = _small_cnn(80, len(index.classes))
    model.fit(train.pixels.astype(np.float32), train.labels, batch_size=16, epochs=8, verbose=0)
    _, accuracy = model.evaluate(test.pixels.astype(np.float32), test.labels, verbose=0)
    print(f"held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.5, f"held-out accuracy {accuracy:.2f} (chance 0.25)"
