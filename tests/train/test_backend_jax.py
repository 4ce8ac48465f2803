"""`train --backend jax`: the pretrained two-phase path on JAX, with TensorFlow unimportable in its process, then
its model.keras read by TensorFlow (the tests' process, and export's) with the same predictions and ONNX parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train.conftest import PRETRAINED_SIZE

pytestmark = pytest.mark.slow


def test_jax_run_records_backend_and_both_phases(jax_run):
    run, output = jax_run
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["backend"] == "jax"
    assert config["backend"]["name"] == "jax" and config["backend"]["version"]
    assert "on jax" in output.splitlines()[output.splitlines().index(next(
        line for line in output.splitlines() if line.startswith("Keras ")))]
    assert [p["phase"] for p in config["phases"]] == ["head", "fine-tune"]
    assert config["best_checkpoint"]["best_phase"] == "fine-tune", config["best_checkpoint"]
    assert all(p["steps_skipped"] == 0 and p["updates_applied"] == p["steps"] > 0 for p in config["phases"])
    speed = config["throughput"]
    assert len(speed["first_step_s"]) == 2 and speed["steps_timed"] == sum(p["steps"] for p in config["phases"]) - 2
    assert speed["images_per_s"] > 0


# BatchNorm frozen in phase 2 and the convolutions' split: tests/train/test_pretrained.py, parametrised over
# the backends (this run is its "jax" case).


def test_tensorflow_reads_the_jax_model_with_the_same_predictions(jax_run):
    """The run's test predictions were made by JAX; TensorFlow's on the same pixels agree to float32 rounding.

    Tolerance: float32 sums of up to ~10^4 terms per output through ~100 layers differ between two engines by
    a relative ~1e-6 per layer; 1e-3 on a probability leaves two orders of magnitude of room.
    """
    import keras

    from tumor_edge.data.dataset import load_pixels, read_split
    from tumor_edge.runtime.preprocess import Preprocessing

    run, _ = jax_run
    saved = np.load(run / "test_predictions.npz")
    _, samples = read_split(run / "split.json", "test")
    spec = Preprocessing(PRETRAINED_SIZE, PRETRAINED_SIZE, "bilinear", "none")
    pixels = load_pixels(samples, spec, show_progress=False)
    assert [str(s.path) for s in pixels.samples] == [str(f) for f in saved["files"]]
    model = keras.models.load_model(run / "model.keras", compile=False)
    probs = model.predict(pixels.pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probs, saved["probabilities"], atol=1e-3)


def test_jax_trained_run_exports_fp32_onnx_with_parity(jax_run, tmp_path, monkeypatch):
    """Export of a JAX-trained model.keras by TensorFlow (this process's Keras backend; in this process to save
    a TensorFlow start: tests/export covers the isolated worker): the fp32 ONNX file passes parity."""
    from tumor_edge.export.exporter import ExportConfig, export_bundle
    from tumor_edge.export.parity import ParityThresholds

    run, _ = jax_run
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    out = tmp_path / "bundle"
    export_bundle(ExportConfig(source=run, out=out, formats=("onnx",), show_progress=False,
                               thresholds=ParityThresholds(max_accuracy_drop=10.0, max_auc_drop=0.05),
                               allow_unproven=True, isolate=False))
    parity = json.loads((out / "parity.json").read_text())
    fp32 = parity["files"]["model_fp32.onnx"]
    assert fp32["verdict"] in ("pass", "not proven"), fp32  # 40 test images cannot prove the 1-point tolerance
    assert fp32["agreement"] >= 0.99 and fp32["max_abs_diff"] < 1e-3, fp32  # the docstring above: float32 room
