"""The session's one export (`exported_bundle`: the tiny trained InceptionV3 run, every format, --int8 --fp16):
its files, metadata, parity report, and an independent check that the runtime reproduces Keras from image files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tumor_edge.contracts.bundle import (
    BUNDLE_DOCUMENTS,
    METADATA_FILE,
    MODEL_CARD,
    PARITY_JSON,
    PARITY_MD,
    RELIABILITY_PNG,
    BundleMetadata,
    sha256_file,
)
from tumor_edge.contracts.formats import BUNDLE_MODEL_FILES

pytestmark = pytest.mark.slow

FILES = BUNDLE_MODEL_FILES  # the fixture exports every row of the format table


def magnification(bundle: Path) -> float:
    """How much the bundle's temperature can magnify a probability difference between two models.

    The runtime returns softmax(log p / T). A softmax output moves by at most half the largest change of its
    inputs (the absolute row sums of its Jacobian are 2 p (1 - p) <= 1/2), and dividing by T multiplies input
    changes by 1/T: a tolerance on unscaled probabilities holds for scaled ones times max(1, 1/T). The tests
    thereby hold whatever temperature training fitted on this machine (T < 1 sharpens, T > 1 only shrinks).
    """
    t = (BundleMetadata.read(bundle).calibration or {}).get("temperature") or 1.0
    return max(1.0, 1.0 / t)


def unscaled(clf):
    """The classifier with its calibration temperature off: the model's own probabilities, as Keras gives them."""
    import dataclasses

    clf.postprocessing = dataclasses.replace(clf.postprocessing, temperature=None)
    return clf


@pytest.fixture(scope="module")
def metadata(exported_bundle) -> dict:
    return json.loads((exported_bundle / METADATA_FILE).read_text())


@pytest.fixture(scope="module")
def parity(exported_bundle) -> dict:
    return json.loads((exported_bundle / PARITY_JSON).read_text())


def test_every_format_is_written_with_size_and_hash(exported_bundle, metadata):
    models = metadata["models"]
    for name in FILES:
        path = exported_bundle / name
        assert path.is_file(), name
        assert models[name]["size_bytes"] == path.stat().st_size
        assert models[name]["sha256"] == sha256_file(path)
        assert models[name]["parity"] in ("pass", "not proven"), name  # 40 images prove little; never "fail"
    fp32 = models["model_fp32.onnx"]["size_bytes"]
    for name in ("model_int8.onnx", "model_int8.tflite"):
        assert models[name]["size_bytes"] < 0.3 * fp32, f"{name} should be about a quarter of fp32"
    for name in ("model_fp16.onnx", "model_fp16.tflite"):
        assert models[name]["size_bytes"] < 0.55 * fp32



def test_bundle_holds_models_not_machine_specific_files(exported_bundle, metadata):
    """No pre-optimised twins (*.ort.onnx) or anything else made for the export machine; the runtime
    builds and caches the optimised form on each device."""
    present = {p.name for p in exported_bundle.iterdir()}
    assert present == set(FILES) | {METADATA_FILE, PARITY_JSON, PARITY_MD, MODEL_CARD, RELIABILITY_PNG}, present
    assert present <= set(BUNDLE_MODEL_FILES) | set(BUNDLE_DOCUMENTS)
    assert set(metadata["models"]) == set(FILES)
    for entry in metadata["models"].values():
        assert "ort_optimized_from" not in entry and "optimized_for" not in entry


def test_metadata_contract(trained_run, metadata):
    run_config = json.loads((trained_run / "config.json").read_text())
    assert metadata["classes"] == run_config["classes"]
    assert metadata["preprocessing"]["scaling"] == run_config["preprocessing"]["scaling"] == "none"
    assert metadata["preprocessing"]["height"] == 75
    assert metadata["input"]["layout"] == "NHWC" and metadata["input"]["shape"] == [None, 75, 75, 3]
    assert metadata["output"]["type"] == "probabilities"
    assert "not a diagnostic device" in metadata["intended_use"]
    prov = metadata["provenance"]
    assert prov["data_fingerprint"] == run_config["data_fingerprint"]
    assert prov["run_dir"] == str(trained_run.resolve())
    assert prov["parity"] in ("proven", "not proven")
    for package in ("tumor-edge", "tf2onnx", "onnx", "onnxruntime", "keras"):
        assert prov["versions"].get(package), package
    assert prov["exported"][:2] == "20"
    assert metadata["metrics"]["parity"]["verdict"] in ("pass", "not proven")


def test_calibration_methods_were_compared_on_validation(metadata):
    calib = metadata["metrics"]["onnx_int8_calibration"]
    methods = [c["method"] for c in calib["candidates"]]
    assert methods == ["minmax", "entropy", "percentile"]
    assert calib["chosen"] in methods and calib["validation_images"] > 0
    assert metadata["models"]["model_int8.onnx"]["calibration"] == calib["chosen"]
    ref = calib["reference"]

    def loss(c):  # the documented order: disagreement, accuracy lost, AUC lost, mean probability shift
        return (round(1 - c["agreement"], 9), round(max(0.0, ref["accuracy"] - c["accuracy"]), 9),
                round(max(0.0, ref["macro_auc"] - c["macro_auc"]), 9), c["mean_abs_diff"])

    assert min(calib["candidates"], key=loss)["method"] == calib["chosen"]
    assert calib["calibration_images"] > 100  # the training split, never the test split
    assert any("Softmax" in n for n in calib["float_nodes"])


def test_parity_report_within_tolerance(exported_bundle, parity):
    files = parity["files"]
    assert set(FILES) <= set(files) and parity["n_images"] == 40
    k = magnification(exported_bundle)  # parity compares temperature-scaled probabilities on both sides
    for name in ("model_fp32.onnx", "model_fp32.tflite"):
        assert files[name]["max_abs_diff"] < 1e-4 * k and files[name]["agreement"] == 1.0, name
    for name in ("model_fp16.onnx", "model_fp16.tflite"):
        assert files[name]["max_abs_diff"] < 1e-2 * k and files[name]["agreement"] >= 0.99, name
    for name in ("model_int8.onnx", "model_int8.tflite"):
        # The fixture's thresholds (accuracy drop <= 10 points, AUC drop <= 0.05), plus agreement: one image of
        # 40 is 2.5 points, and the toy model has near-ties that int8 may flip.
        assert files[name]["agreement"] >= 0.85, name
        assert files[name]["delta_accuracy_points"] >= -10.0 - 1e-9, name  # 4 of 40 images
        assert files[name]["delta_auc"] >= -0.05 - 1e-9, name
        assert files[name]["verdict"] in ("pass", "not proven"), name
    keras_acc = parity["keras"]["accuracy"]
    assert keras_acc > 0.6, "the shared trained run should be well above chance, or parity means little"
    md = (exported_bundle / PARITY_MD).read_text()
    assert f"Result: {parity['verdict'].upper()}" in md and all(name in md for name in FILES)
    assert "## Intervals and tests" in md and "McNemar" in md


def test_parity_carries_intervals_and_verdicts(parity):
    """Each file's Wilson interval, paired bootstrap intervals, exact McNemar, verdict and, when not
    proven, the images that would prove it; recomputed here from the file's own counts."""
    from tumor_edge.export.parity_stats import mcnemar_exact, wilson_interval

    n = parity["n_images"]
    for name in FILES:
        row = parity["files"][name]
        stats = row["statistics"]
        assert row["verdict"] in ("pass", "not proven", "fail") and stats["n"] == n
        low, high = stats["accuracy_ci"]
        assert low <= row["accuracy"] <= high
        assert (low, high) == pytest.approx(wilson_interval(round(row["accuracy"] * n), n))
        assert stats["mcnemar_p"] == pytest.approx(mcnemar_exact(stats["ref_right_file_wrong"],
                                                                 stats["ref_wrong_file_right"]))
        d_low, d_high = stats["accuracy_diff_ci"]
        assert d_low - 1e-9 <= row["delta_accuracy_points"] / 100 <= d_high + 1e-9
        if row["verdict"] == "not proven":
            assert row["failures"] and (row["images_needed"] is None or row["images_needed"] > n)


def test_parity_reports_calibration_per_file(trained_run, exported_bundle, metadata, parity):
    """ECE before/after the bundle's temperature for every exported file, recomputed here from the
    runtime's own probabilities on the same test images; a reliability diagram and the card's table."""
    from tumor_edge.calibration import apply_temperature, expected_calibration_error
    from tumor_edge.data.dataset import read_split
    from tumor_edge.runtime.classifier import Classifier

    _, test = read_split(trained_run / "split.json", "test")
    labels = np.array([s.label for s in test])
    temperature = (metadata.get("calibration") or {}).get("temperature")
    for name in FILES:
        cal = parity["files"][name]["calibration"]
        assert cal["bins"] == 15 and cal["images"] == parity["n_images"] == len(test), name
        assert cal["temperature"] == temperature, name
    assert set(parity["keras"]["calibration"]) >= {"ece_before", "ece_after"}
    for name in ("model_fp32.onnx", "model_int8.tflite"):  # a float and an int8 file, recomputed
        probs = Classifier.from_bundle(exported_bundle, model_file=name).probabilities_for_files(
            [s.path for s in test])
        raw = probs if temperature is None else apply_temperature(probs.astype(np.float64), 1.0 / temperature)
        cal = parity["files"][name]["calibration"]
        assert cal["ece_after"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6), name
        assert cal["ece_before"] == pytest.approx(expected_calibration_error(raw, labels), abs=1e-6), name
    png = exported_bundle / RELIABILITY_PNG
    assert parity["reliability_diagram"] == RELIABILITY_PNG and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Calibration per file" in (exported_bundle / PARITY_MD).read_text()
    card = (exported_bundle / MODEL_CARD).read_text()
    assert all(f"| {name} | {100 * parity['files'][name]['calibration']['ece_before']:.1f} %" in card for name in FILES)
    assert metadata["metrics"]["parity"]["files"]["model_int8.onnx"]["calibration"]["bins"] == 15


def test_runtime_reproduces_keras_from_image_files(trained_run, exported_bundle):
    """Recompute, outside parity.py: Keras through the training pipeline vs each file through Classifier, both
    without the calibration temperature (Keras' own probabilities): independent of the T training fitted."""
    import keras

    from tumor_edge.data.dataset import load_pixels, read_split
    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.preprocess import Preprocessing
    from tumor_edge.train.evaluate import predict_probabilities

    config = json.loads((trained_run / "config.json").read_text())
    spec = Preprocessing.from_dict(config["preprocessing"])
    _, test = read_split(trained_run / "split.json", "test")
    test = test[::5]
    model = keras.models.load_model(trained_run / "model.keras", compile=False)
    expected = predict_probabilities(model, load_pixels(test, spec, show_progress=False).pixels)
    for name in FILES:
        clf = unscaled(Classifier.from_bundle(exported_bundle, model_file=name))
        got = np.array([[p.probabilities[c] for c in clf.classes] for p in clf.predict_batch([s.path for s in test])])
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-4, err_msg=name)
        precision = name.split("_")[1].split(".")[0]
        if precision == "int8":  # quantization moves single probabilities; on average they must stay close
            assert np.abs(got - expected).mean() < 0.05, name
            assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.75, name
        else:
            np.testing.assert_allclose(got, expected, atol={"fp32": 1e-4, "fp16": 1e-2}[precision], err_msg=name)
            assert (got.argmax(1) == expected.argmax(1)).all(), name


def test_lone_onnx_file_carries_its_metadata(exported_bundle, tmp_path):
    from tumor_edge.runtime.classifier import Classifier

    lone = tmp_path / "alone.onnx"
    shutil.copy(exported_bundle / "model_int8.onnx", lone)
    clf = Classifier.from_bundle(lone)
    bundled = Classifier.from_bundle(exported_bundle, model_file="model_int8.onnx")
    assert clf.classes == bundled.classes and clf.preprocessing == bundled.preprocessing
    image = next(Path(json.loads((exported_bundle / METADATA_FILE).read_text())["provenance"]["data_root"])
                 .glob("Testing/*/*.jpg"))
    # The lone file carries the bundle's calibration and output roles too: the same probabilities and outputs.
    assert clf.postprocessing.temperature == bundled.postprocessing.temperature
    assert set(clf.output_specs) == set(bundled.output_specs)
    a, b = clf.predict(image), bundled.predict(image)
    assert a.label == b.label and set(a.outputs) == set(b.outputs)
    # Same file, same engine, same preprocessing: only the optimised-graph cache may differ in summation order.
    k = magnification(exported_bundle)
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in clf.classes) < 1e-5 * k


def test_onnx_has_dynamic_batch(exported_bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported_bundle / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert not isinstance(shape[0], int) and shape[1:] == [75, 75, 3]
    for n in (1, 3):
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((n, 75, 75, 3), np.float32)})[0]
        assert out.shape == (n, 4)
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
