"""Session fixtures of the pretrained two-phase path: one local `notop` weights file, one run trained from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

PRETRAINED_SIZE = 75


@pytest.fixture(scope="session")
def notop_weights(train_dataset, tmp_path_factory) -> Path:
    """InceptionV3 `notop` weights, random kernels but realistic BatchNorm statistics (no download).

    With momentum 0, one training-mode pass over training images sets every moving mean/variance to the
    statistics of real activations, as ImageNet weights carry; with Keras' initial 0/1 a frozen BatchNorm
    would be so wrong that phase 2 could never win the checkpoint.
    """
    import keras

    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime.preprocess import Preprocessing

    index = discover(train_dataset)
    spec = Preprocessing(PRETRAINED_SIZE, PRETRAINED_SIZE, "bilinear", "none")
    pixels = load_pixels(index.train[::3], spec, show_progress=False).pixels.astype(np.float32)
    base = keras.applications.InceptionV3(include_top=False, weights=None,
                                          input_shape=(PRETRAINED_SIZE, PRETRAINED_SIZE, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    base(pixels / 127.5 - 1.0, training=True)
    path = tmp_path_factory.mktemp("weights") / "inception_v3_notop.weights.h5"
    base.save_weights(path)
    return path


@pytest.fixture(scope="session")
def pretrained_run(train_dataset, notop_weights, tmp_path_factory) -> tuple[Path, str]:
    """`tumor-edge train --weights FILE`: both phases at 75 px, augmentation on. (run folder, CLI output).

    No validation part: the best checkpoint is then picked by training loss, which phase 2 lowers, so the saved
    model is phase 2's and shows what fine-tuning did. (On a validation part of 28 images, a base with random
    kernels is near chance and which phase wins is a coin toss.)
    """
    from tumor_edge.cli import main

    out = tmp_path_factory.mktemp("pretrained") / "run"
    result = CliRunner().invoke(main, [
        "train", str(train_dataset), "--out", str(out), "--image-size", str(PRETRAINED_SIZE),
        "--weights", str(notop_weights), "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "16",
        "--fine-tune-learning-rate", "1e-4", "--val-split", "0", "--mixed-precision", "off", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out, result.output
