"""`tumor-edge train` end to end on a generated set (the session's shared run) and its error paths."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tumor_edge.cli import main
from tumor_edge.data.dataset import discover
from tumor_edge.metrics import classification_metrics

RUN_FILES = ["model.keras", "config.json", "split.json", "history.csv", "metrics.json", "roc.png",
             "confusion_matrix.png", "training_curves.png", "test_predictions.npz"]

pytestmark = pytest.mark.slow


def test_run_folder_is_complete(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
        assert (trained_run / name).stat().st_size > 0, name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert config["preprocessing"]["height"] == 75 and config["preprocessing"]["scaling"] == "none"
    assert len(config["data_fingerprint"]) == 64
    assert config["train_config"]["seed"] == 1 and config["versions"]["tensorflow"]
    with open(trained_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 1 and {"loss", "val_loss", "accuracy", "val_auc"} <= set(rows[0])


def test_split_is_disjoint_and_test_is_the_testing_folder(trained_run, train_dataset):
    split = json.loads((trained_run / "split.json").read_text())
    train = {p for p, _ in split["train"]}
    val = {p for p, _ in split["val"]}
    test = {p for p, _ in split["test"]}
    assert not train & val and not (train | val) & test
    assert all(p.startswith("Training/") for p in train | val)
    index = discover(train_dataset)
    assert test == {str(s.path.relative_to(train_dataset)) for s in index.test}
    # stratified: every class in validation
    assert {label for _, label in split["val"]} == {0, 1, 2, 3}


def test_metrics_are_recomputable_from_the_saved_predictions(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    saved = np.load(trained_run / "test_predictions.npz")
    again = classification_metrics(saved["labels"], saved["probabilities"], metrics["classes"])
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["macro_auc"] == pytest.approx(metrics["macro_auc"])
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    # labels follow the file order of the Testing folder, so each row's label matches its file's class folder
    for f, label in zip(saved["files"], saved["labels"]):
        assert Path(str(f)).parent.name == metrics["classes"][label]
    assert metrics["n"] == 40


def test_trained_model_learned_the_task(trained_run):
    """A real check on the fixture: parity tests downstream are meaningless on a chance-level model."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.7, metrics["accuracy"]
    assert metrics["macro_auc"] >= 0.85


def test_keras_model_matches_runtime_preprocessing(trained_run):
    """The saved model takes raw 0..255 pixels: InceptionV3's scaling is inside its graph."""
    import keras

    model = keras.models.load_model(trained_run / "model.keras", compile=False)
    assert model.input_shape == (None, 75, 75, 3)
    assert any(layer.name == "inception_scaling" for layer in model.layers)


def test_evaluate_reproduces_the_run_metrics(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "metrics.json").read_text())
    original = json.loads((trained_run / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(original["accuracy"])
    assert (out / "roc.png").is_file()
    # a second time without --force refuses to overwrite
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "--out", str(out)])
    assert result.exit_code == 1 and "pass --force" in result.output


def test_existing_run_folder_is_not_overwritten(trained_run, train_dataset):
    before = (trained_run / "model.keras").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["train", str(train_dataset), "--out", str(trained_run),
                                       "--weights", "none", "--image-size", "75"])
    assert result.exit_code == 1
    assert "run folder exists and is not empty; pass --force" in result.output
    assert (trained_run / "model.keras").stat().st_mtime_ns == before


def test_missing_weights_file_and_too_small_image(train_dataset, tmp_path):
    result = CliRunner().invoke(main, ["train", str(train_dataset), "--out", str(tmp_path / "r"),
                                       "--weights", str(tmp_path / "nope.h5")])
    assert result.exit_code == 1 and "weights file not found" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(main, ["train", str(train_dataset), "--image-size", "64"])
    assert result.exit_code == 2 and "64" in result.output


def test_offline_imagenet_download_fails_with_advice(train_dataset, tmp_path):
    """No network here or in CI: the ImageNet download must fail with what to do, before writing anything."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / "keras"),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "tumor_edge.cli", "train", str(train_dataset),
                           "--out", str(tmp_path / "r"), "--image-size", "75"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not download the ImageNet weights")
    assert "--weights none" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
