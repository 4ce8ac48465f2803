"""Export of models made outside tumor-edge, and the one-line errors of `tumor-edge export`.

A small CNN (not InceptionV3: conversion cost, not architecture, is what these tests exercise) trained for a few
seconds on the toy data, saved as a .keras file that outputs LOGITS and expects SYMMETRIC (x/127.5 - 1) input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.toydata import CLASSES
from tumor_edge.cli import main

SIZE = 64


@pytest.fixture(scope="module")
def logits_model(toy_dataset, tmp_path_factory) -> Path:
    """A trained 4-class CNN on symmetric-scaled input whose last layer is linear (logits)."""
    import keras

    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime.preprocess import Preprocessing, scale

    keras.utils.set_random_seed(3)
    index = discover(toy_dataset)
    spec = Preprocessing(SIZE, SIZE, scaling="symmetric")
    train = load_pixels(index.train, spec, show_progress=False)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES))(x)  # linear: logits
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(scale(train.pixels, spec), train.labels, epochs=25, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("foreign") / "cnn_logits.keras"
    model.save(path)
    return path


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> Path:
    """Where `export` records the last bundle for `classify`: a temporary folder, never the user's home."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "tumor-edge" / "last_bundle"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def _stderr(result) -> str:
    return getattr(result, "stderr", None) or result.output


@pytest.mark.slow
def test_foreign_logits_model_yields_correct_probabilities(logits_model, toy_dataset, tmp_path, state_home):
    """Logits + symmetric preprocessing: the runtime must give softmax(Keras logits) from the image files."""
    import keras

    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime.classifier import Classifier, softmax
    from tumor_edge.runtime.preprocess import Preprocessing, scale

    out = tmp_path / "bundle"
    result = _invoke(["export", logits_model, "--out", out, "--classes", ",".join(CLASSES),
                      "--preprocess", "symmetric", "--test-data", toy_dataset / "Testing",
                      "--calib-data", toy_dataset, "--int8", "--allow-unproven", "--quiet"])
    assert result.exit_code == 0, result.output
    assert state_home.read_text().strip() == str(out.resolve())  # `classify` with no flags uses it
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["preprocessing"]["scaling"] == "symmetric"
    assert meta["output"]["type"] == "probabilities"
    assert meta["provenance"]["output"] == {"model_output": "logits", "decided_by": "last layer is linear",
                                            "softmax_appended": True}
    assert meta["metrics"]["parity"]["verdict"] in ("pass", "not proven")  # 32 test images prove little
    files = {"model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite"}
    assert files <= set(meta["models"])

    index = discover(toy_dataset)
    paths = [s.path for s in index.test]
    spec = Preprocessing(SIZE, SIZE, scaling="symmetric")
    model = keras.models.load_model(logits_model)
    expected = softmax(model.predict(scale(load_pixels(index.test, spec, show_progress=False).pixels, spec),
                                     verbose=0).astype(np.float64))
    assert not np.allclose(expected, 0.25, atol=0.05), "the test model should be trained, not uniform"
    # A foreign model's temperature is fitted at export on the held-back calibration images; the runtime applies it.
    calibration = meta.get("calibration") or {}
    assert calibration.get("temperature") or "held-back" in calibration.get("skipped", "")
    if calibration.get("temperature"):
        from tumor_edge.calibration import apply_temperature

        assert "held-out" in calibration["fitted_on_data"]
        expected = apply_temperature(expected, calibration["temperature"])
    for name in ("model_fp32.onnx", "model_fp32.tflite"):
        probs = Classifier.from_bundle(out, model_file=name).probabilities_for_files(paths)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, expected, atol=1e-4, err_msg=name)
    for name in ("model_int8.onnx", "model_int8.tflite"):
        probs = Classifier.from_bundle(out, model_file=name).probabilities_for_files(paths)
        assert np.mean(probs.argmax(1) == expected.argmax(1)) >= 0.9, name
        assert np.abs(probs - expected).max() < 0.2, name


@pytest.mark.slow
def test_savedmodel_folder_exports_with_its_probabilities(logits_model, toy_dataset, tmp_path):
    """A SavedModel folder (the same logits CNN, exported by Keras): its serving signature is converted, the
    source is recorded by the digest of saved_model.pb, and the runtime gives softmax(logits) from the files."""
    import keras

    from tumor_edge.contracts.bundle import sha256_file
    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime.classifier import Classifier, softmax
    from tumor_edge.runtime.preprocess import Preprocessing, scale

    model = keras.models.load_model(logits_model)
    saved = tmp_path / "saved"
    model.export(saved, verbose=False)
    out = tmp_path / "bundle"
    result = _invoke(["export", saved, "--out", out, "--classes", ",".join(CLASSES), "--preprocess", "symmetric",
                      "--output", "logits", "--test-data", toy_dataset / "Testing", "--allow-unproven", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["provenance"]["source"]["kind"] == "savedmodel"
    assert meta["provenance"]["source"]["sha256"] == sha256_file(saved / "saved_model.pb")
    index = discover(toy_dataset)
    spec = Preprocessing(SIZE, SIZE, scaling="symmetric")
    logits = model.predict(scale(load_pixels(index.test, spec, show_progress=False).pixels, spec), verbose=0)
    expected = softmax(logits.astype(np.float64))
    temperature = (meta.get("calibration") or {}).get("temperature")
    if temperature:
        from tumor_edge.calibration import apply_temperature

        expected = apply_temperature(expected, temperature)
    probs = Classifier.from_bundle(out, model_file="model_fp32.onnx").probabilities_for_files(
        [s.path for s in index.test])
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@pytest.mark.slow
def test_planted_preprocessing_mismatch_fails_parity(logits_model, toy_dataset, tmp_path, state_home):
    """A run whose bundle declares other scaling than training used: parity fails, exit 3, files kept."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(logits_model, run / "model.keras")
    (run / "config.json").write_text(json.dumps({
        "classes": list(CLASSES), "output": "logits",
        "preprocessing": {"height": SIZE, "width": SIZE, "resize": "bilinear", "scaling": "symmetric"}}))
    out = tmp_path / "bundle"
    # The model was trained on x/127.5-1; the bundle is told x/255 (a classic Keras preprocess_input mix-up).
    result = _invoke(["export", run, "--out", out, "--preprocess", "unit", "--formats", "onnx",
                      "--test-data", toy_dataset, "--quiet"])
    assert result.exit_code == 3, result.output
    err = _stderr(result)
    assert "error: parity failed: model_fp32.onnx" in err
    assert "agreement" in err or "points below Keras" in err
    assert "Traceback" not in result.output
    assert (out / "model_fp32.onnx").is_file() and (out / "parity.md").is_file()
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False and parity["files"]["model_fp32.onnx"]["passed"] is False
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["provenance"]["parity"] == "failed"
    assert not state_home.exists(), "a bundle that failed parity must not become the default for classify"


@pytest.mark.slow
def test_unproven_parity_needs_allow_unproven(logits_model, toy_dataset, tmp_path, state_home):
    """32 test images cannot prove a 1-point tolerance: exit 3 naming the images needed, unless allowed."""
    out = tmp_path / "bundle"
    args = ["export", logits_model, "--out", out, "--classes", ",".join(CLASSES), "--preprocess", "symmetric",
            "--formats", "onnx", "--test-data", toy_dataset, "--quiet"]
    result = _invoke(args)
    assert result.exit_code == 3, result.output
    err = _stderr(result)
    assert "parity not proven on 32 test images" in err and "--allow-unproven" in err, err
    assert "would prove it" in err and "Traceback" not in result.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["models"]["model_fp32.onnx"]["parity"] == "not proven"
    assert meta["provenance"]["parity"] == "not proven"
    assert not state_home.exists(), "an unproven bundle must not become the default for classify"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["verdict"] == "not proven" and parity["files"]["model_fp32.onnx"]["images_needed"] > 32


@pytest.mark.slow
def test_no_parity_is_recorded_and_force_overwrites_only_bundle_files(logits_model, tmp_path):
    out = tmp_path / "bundle"
    args = ["export", logits_model, "--out", out, "--classes", ",".join(CLASSES), "--preprocess", "symmetric",
            "--formats", "onnx", "--no-parity", "--quiet"]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert "parity NOT proven" in _stderr(result)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["provenance"]["parity"].startswith("not proven")
    assert meta["metrics"]["parity"]["proven"] is False
    assert meta["models"]["model_fp32.onnx"]["parity"] == "not checked"
    assert not (out / "parity.json").exists()
    (out / "notes.txt").write_text("mine")
    assert _invoke(args).exit_code != 0  # exists: refused without --force
    result = _invoke(args + ["--force"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_fp32.onnx").is_file()


# ------------------------------------------------------------------------------------------ one-line errors


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    err = _stderr(result).strip()
    assert "Traceback" not in result.output
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_missing_model_is_one_line_error(tmp_path):
    result = _invoke(["export", tmp_path / "nope.keras", "--out", tmp_path / "b"])
    _assert_one_line_error(result, "nope.keras", "no such run folder or model file")
    assert not (tmp_path / "b").exists()


def test_unreadable_model_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a keras zip archive")
    result = _invoke(["export", bad, "--out", tmp_path / "b", "--classes", "a,b", "--preprocess", "unit"])
    _assert_one_line_error(result, "broken.keras", "Keras cannot load this model")


def test_classes_that_do_not_match_outputs(logits_model, toy_dataset, tmp_path):
    result = _invoke(["export", logits_model, "--out", tmp_path / "b", "--classes", "a,b,c",
                      "--preprocess", "symmetric", "--test-data", toy_dataset])
    _assert_one_line_error(result, "cnn_logits.keras", "4 outputs but 3 classes")


def test_empty_test_folder(logits_model, tmp_path):
    empty = tmp_path / "Testing"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
    result = _invoke(["export", logits_model, "--out", tmp_path / "b", "--classes", ",".join(CLASSES),
                      "--preprocess", "symmetric", "--test-data", empty])
    _assert_one_line_error(result, str(empty), "no test images")
    assert not (tmp_path / "b").exists()


def test_existing_out_without_force(logits_model, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke(["export", logits_model, "--out", out, "--classes", ",".join(CLASSES),
                      "--preprocess", "symmetric", "--no-parity"])
    _assert_one_line_error(result, str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_foreign_model_needs_classes_and_preprocess(logits_model, tmp_path):
    result = _invoke(["export", logits_model, "--out", tmp_path / "b", "--preprocess", "unit"])
    _assert_one_line_error(result, "--classes")
    result = _invoke(["export", logits_model, "--out", tmp_path / "b", "--classes", ",".join(CLASSES)])
    _assert_one_line_error(result, "--preprocess")


def test_int8_without_calibration_images(logits_model, toy_dataset, tmp_path):
    result = _invoke(["export", logits_model, "--out", tmp_path / "b", "--classes", ",".join(CLASSES),
                      "--preprocess", "symmetric", "--test-data", toy_dataset, "--int8"])
    _assert_one_line_error(result, "--calib-data")
