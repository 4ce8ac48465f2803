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
    keras.utils.set_random_seed(0)  # the same kernels every session: the runs below start from the same weights
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
    model is phase 2's and shows what fine-tuning did. Phase 2 runs at the default 1e-5: its epoch's mean loss
    is then about where phase 1 ended, below phase 1's mean, which includes its untrained first steps; at 1e-4
    the updates to random-kernel convolutions raised the loss in one session of two (phase 1 kept the checkpoint).
    (On a validation part of 28 images, a base with random
    kernels is near chance and which phase wins is a coin toss.)
    """
    from tumor_edge.cli import main

    out = tmp_path_factory.mktemp("pretrained") / "run"
    result = CliRunner().invoke(main, [
        "train", str(train_dataset), "--out", str(out), "--image-size", str(PRETRAINED_SIZE),
        "--weights", str(notop_weights), "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "16",
        "--val-split", "0", "--mixed-precision", "off", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out, result.output


TF_BLOCKER = '''
import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """As on a machine without TensorFlow: importing it fails as an absent package does."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.fixture(scope="session")
def jax_run(train_dataset, notop_weights, tmp_path_factory) -> tuple[Path, str]:
    """`tumor-edge train --backend jax`: the pretrained two-phase path of `pretrained_run`, in a process where
    TensorFlow cannot be imported (a `sitecustomize` blocks it), as on a GPU machine with JAX and no TensorFlow.
    Rotation, shift and zoom are off: on JAX their affine resampling multiplies the CPU compile time of the step;
    flip and contrast keep augmentation layers in the training graph. (run folder, CLI output)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax", reason="the jax extra is not installed")
    blocker = tmp_path_factory.mktemp("no-tensorflow")
    (blocker / "sitecustomize.py").write_text(TF_BLOCKER)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(root), os.environ.get("PYTHONPATH", "")]),
           "KERAS_BACKEND": "tensorflow"}  # --backend must win over the environment
    out = tmp_path_factory.mktemp("jax") / "run"
    proc = subprocess.run([
        sys.executable, "-m", "tumor_edge.cli", "train", str(train_dataset), "--backend", "jax", "--out", str(out),
        "--image-size", str(PRETRAINED_SIZE), "--weights", str(notop_weights), "--epochs", "1",
        "--fine-tune-epochs", "1", "--batch-size", "16", "--val-split", "0",
        "--mixed-precision", "off", "--seed", "3", "--rotation", "0", "--shift", "0", "--zoom", "0"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout
