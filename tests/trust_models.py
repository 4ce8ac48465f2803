"""Tiny real Keras models for the trust tests (calibration, heatmaps, OOD), trained once per test process.

`blob_images`: a noisy grey "scan" (a head-like disc on a black background) where class 1 holds a small bright
lesion at a random place and class 0 none. Synthetic. `blob_cnn()` is a GAP + dense CNN (InceptionV3's head in
miniature) trained on it in a few seconds; `overconfident_mlp()` is a small network over-trained on noisy
labels, which makes it over-confident on data it has not seen. Both are cached: the first caller trains.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BLOB_SIZE = 32


@dataclass
class BlobSet:
    pixels: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray  # (N,) 0: no lesion, 1: lesion
    centres: np.ndarray  # (N, 2) lesion (row, col), -1 where none


def blob_images(n: int, seed: int, size: int = BLOB_SIZE) -> BlobSet:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.arange(n) % 2
    pixels = np.zeros((n, size, size), np.float32)
    centres = np.full((n, 2), -1, np.int64)
    for i in range(n):
        head = ((xx - size / 2) / (0.44 * size)) ** 2 + ((yy - size / 2) / (0.46 * size)) ** 2 < 1
        img = np.where(head, 70.0 + 15 * np.sin(xx / 3 + rng.uniform(0, 6)), 3.0)
        if labels[i]:
            r, c = rng.integers(int(0.25 * size), int(0.75 * size), 2)
            img = np.where(np.hypot(yy - r, xx - c) < 2.5, 230.0, img)
            centres[i] = (r, c)
        pixels[i] = img + rng.normal(0, 6, img.shape)
    grey = np.clip(pixels, 0, 255).astype(np.uint8)
    return BlobSet(np.repeat(grey[..., None], 3, axis=-1), labels, centres)


def _cnn(size: int):
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


@functools.lru_cache(maxsize=1)
def blob_cnn():
    """(model, training set): a GAP + dense CNN that finds the lesion (>= 95 % on fresh images)."""
    import keras

    keras.utils.set_random_seed(0)
    train = blob_images(400, seed=1)
    model = _cnn(BLOB_SIZE)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = np.tile(train.pixels.astype(np.float32), (12, 1, 1, 1)), np.tile(train.labels, 12)  # 12 epochs as one
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model, train


@functools.lru_cache(maxsize=1)
def overconfident_mlp():
    """(model, make_split): a 3-class MLP over-trained on 25 %-noisy labels. `make_split(n, seed)` draws
    (features, labels) from the same noisy source, for validation and test."""
    import keras

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, (3, 8))

    def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        labels = r.integers(0, 3, n)
        x = centres[labels] + r.normal(0, 1.0, (n, 8))
        flip = r.random(n) < 0.25
        labels = np.where(flip, r.integers(0, 3, n), labels)
        return x.astype(np.float32), labels

    keras.utils.set_random_seed(0)
    x, y = make_split(150, 1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    # 300 full-batch steps as one epoch (per-epoch overhead would dominate otherwise)
    model.fit(np.tile(x, (300, 1)), np.tile(y, 300), epochs=1, batch_size=150, shuffle=False, verbose=0)
    return model, make_split
