"""Fixtures the bench tests share: a tiny Keras model exported by the product's own `tumor-edge export` (its
MACs counted by hand), the harness's record on the session's exported bundle, and a result-row factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.toydata import CLASSES
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder

SIZE = 32
# MACs of the tiny model below, by hand: conv 3x3 stride 2 (3->8) on 32x32 -> 16x16x8, each 3*3*3 MACs;
# depthwise 3x3 on 16x16x8, each 9; pointwise 8->16 on 16x16; dense 16->4.
TINY_MACS = 16 * 16 * 8 * 27 + 16 * 16 * 8 * 9 + 16 * 16 * 16 * 8 + 16 * 4
# Export adds the class activation map: a 1x1 conv with the dense weights at each of the 16x16 positions.
TINY_HEATMAP_MACS = 16 * 16 * 16 * 4


def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def tiny_onnx(toy_dataset, tmp_path_factory) -> Path:
    """The tiny model above as a run folder, exported to fp32 and int8 ONNX by `tumor-edge export` itself (the
    bench has no converter of its own), calibrated on the toy images; parity off (random weights)."""
    base = tmp_path_factory.mktemp("tiny")
    run = RunFolder(base / "run")
    run.path.mkdir()
    tiny_model().save(run.model)
    RunConfig(classes=list(CLASSES), preprocessing=Preprocessing(SIZE, SIZE, "bilinear", "none")).write(run.config)
    bundle = base / "bundle"
    env = dict(os.environ, XDG_STATE_HOME=str(base / "state"), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "tumor_edge.cli", "export", str(run.path), "--out", str(bundle),
                           "--formats", "onnx", "--int8", "--no-parity", "--calib-data", str(toy_dataset),
                           "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bundle


@pytest.fixture(scope="session")
def record(exported_bundle) -> dict:
    """One harness run over every file of the session's bundle and the Keras reference: 1 and 2 threads, batch 1
    and 3, short plans, one cold start each."""
    from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench

    config = BenchConfig(model=exported_bundle, threads=[1, 2], batches=[1, 3], plan=RunPlan(1, 5, 0.0),
                         image_count=6, cold_runs=1, show_progress=False)
    return run_bench(config)


@pytest.fixture
def make_row():
    """A result row as the harness records it, with only the fields the derived figures read."""
    def row(fmt: str, threads: int, batch: int, p50: float, precision: str | None = None) -> dict:
        out = {"format": fmt, "threads": threads, "batch": batch, "p50_ms": p50, "p90_ms": p50 * 1.1}
        if precision is not None:
            out["precision"] = precision
        return out
    return row
