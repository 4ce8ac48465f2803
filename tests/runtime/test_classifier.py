"""Classifier API on real ONNX files (built with onnx.helper) through real onnxruntime sessions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.runtime.models import (
    CLASSES,
    SIZE,
    make_bundle,
    quadrant_image,
    quadrant_metadata,
    quadrant_model,
    save_quadrant,
    write_dicom,
)
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.errors import ModelError
from tumor_edge.runtime import BackendOptions, Classifier, Failure, Prediction
from tumor_edge.runtime.backends import resolve_providers


@pytest.fixture(scope="module")
def clf(bundle):
    return Classifier.from_bundle(bundle)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    return [save_quadrant(folder / f"q{q}.png", q) for q in range(4)]


def test_predict_each_quadrant(clf, scans):
    for q, path in enumerate(scans):
        result = clf.predict(path)
        assert isinstance(result, Prediction)
        assert result.label == CLASSES[q] and result.index == q
        assert result.source == str(path)
        assert set(result.probabilities) == set(CLASSES)
        assert abs(sum(result.probabilities.values()) - 1) < 1e-5
        assert result.confidence == max(result.probabilities.values()) > 0.5
        assert result.top_k(2)[0] == (result.label, result.confidence)


def test_predict_accepts_pil_and_arrays(clf):
    assert clf.predict(Image.fromarray(quadrant_image(1))).label == "meningioma"
    assert clf.predict(quadrant_image(2)).label == "notumor"
    assert clf.predict(quadrant_image(3, SIZE)).label == "pituitary"  # already model-sized
    assert clf.predict(quadrant_image(0, grey=False)).label == "glioma"  # (H, W) grey
    deep = quadrant_image(1, grey=False).astype(np.uint16) * 200  # a 16-bit scan array
    assert clf.predict(deep).label == "meningioma"
    with pytest.raises(ValueError, match="integer pixels"):
        clf.predict(quadrant_image(0).astype(np.float32))


def test_predict_batch_matches_predict(clf, scans):
    batch = clf.predict_batch(scans)
    assert [p.label for p in batch] == CLASSES
    for path, result in zip(scans, batch):
        single = clf.predict(path).probabilities
        assert all(abs(single[c] - result.probabilities[c]) < 1e-6 for c in CLASSES)
    assert clf.predict_batch([]) == []
    probs = clf.predict_proba_files(scans, batch_size=3)
    assert probs.shape == (4, 4) and list(probs.argmax(1)) == [0, 1, 2, 3]


def test_logits_output_gets_softmax(tmp_path, scans):
    bundle = make_bundle(tmp_path / "logits", output="logits")
    result = Classifier.from_bundle(bundle).predict(scans[3])
    assert result.label == "pituitary" and abs(sum(result.probabilities.values()) - 1) < 1e-5


def test_lone_onnx_with_metadata_and_bundle_file(bundle, tmp_path, scans):
    lone = tmp_path / "lone.onnx"
    onnx.save(quadrant_model(metadata=quadrant_metadata()), lone)
    assert Classifier.from_bundle(lone).predict(scans[0]).label == "glioma"
    assert Classifier.from_bundle(bundle / "model_fp32.onnx").predict(scans[1]).label == "meningioma"
    assert Classifier.from_bundle(bundle, model_file="model_fp32.onnx").classes == CLASSES


def test_options_threads_and_providers(bundle, scans):
    clf = Classifier.from_bundle(bundle, options=BackendOptions(threads=1, providers=["auto"]))
    assert clf.predict(scans[2]).label == "notumor"
    assert clf.backend.providers[-1] == "CPUExecutionProvider"
    assert "AzureExecutionProvider" not in resolve_providers(["auto"])[0]
    use, missing = resolve_providers(["CUDA", "cpu"])
    assert use == ["CPUExecutionProvider"] and missing == ["CUDAExecutionProvider"]
    with pytest.raises(ValueError):
        BackendOptions(optimization="max")


# ---- iter_predictions: streaming, ordered, fault-tolerant -------------------------------------------------


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (3, 2), (16, 1)])
def test_iter_predictions_keeps_order_and_skips_bad_files(clf, scans, tmp_path, batch_size, workers):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [scans[0], tmp_path / "missing.png", scans[1], tmp_path / "text.jpg", scans[2], scans[3],
             tmp_path / "empty.png"]
    results = list(clf.iter_predictions(paths, batch_size=batch_size, workers=workers))
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.ok for r in results] == [True, False, True, False, True, True, False]
    assert [r.label for r in results if r.ok] == CLASSES
    failures = [r for r in results if not r.ok]
    assert all(isinstance(f, Failure) and f.source in f.message for f in failures)
    assert "no such file" in failures[0].message and "not an image" in failures[1].message
    assert "empty file" in failures[2].message


def test_iter_predictions_streams_before_the_end(clf, scans):
    stream = clf.iter_predictions((p for p in scans * 50), batch_size=4)  # a generator of 200 paths
    first = next(stream)
    assert first.label == "glioma"
    stream.close()  # stopping early cancels the queued decoding


def test_iter_predictions_all_frames(clf, tmp_path, scans):
    volume = np.stack([quadrant_image(q, grey=False).astype(np.uint16) * 10 for q in (0, 1, 3)])
    series = write_dicom(tmp_path / "series.dcm", volume)
    results = list(clf.iter_predictions([scans[2], series], batch_size=2, frames="all"))
    assert [(r.label, r.frame, r.frame_count) for r in results] == [
        ("notumor", None, None), ("glioma", 0, 3), ("meningioma", 1, 3), ("pituitary", 2, 3)]
    assert results[1].to_dict()["frames"] == 3
    middle = list(clf.iter_predictions([series]))
    assert [(r.label, r.frame) for r in middle] == [("meningioma", 1)]


# ---- bad models and bundles: one-line ModelErrors -------------------------------------------------------------


def _model_error(*args, **kwargs) -> str:
    with pytest.raises(ModelError) as info:
        Classifier.from_bundle(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bundle_missing_metadata(tmp_path):
    folder = tmp_path / "nometa"
    folder.mkdir()
    onnx.save(quadrant_model(), folder / "model_fp32.onnx")
    assert "no metadata.json" in _model_error(folder)
    assert "no metadata.json beside" not in _model_error(folder)
    assert "carries no tumor-edge metadata" in _model_error(folder / "model_fp32.onnx")


def test_bundle_with_invalid_metadata(tmp_path):
    folder = make_bundle(tmp_path / "bad")
    (folder / "metadata.json").write_text("{not json")
    assert "unreadable metadata" in _model_error(folder)
    (folder / "metadata.json").write_text(json.dumps({"classes": ["a"]}))
    assert "invalid tumor-edge metadata" in _model_error(folder)


def test_bundle_lists_a_missing_file(tmp_path):
    folder = make_bundle(tmp_path / "gone")
    (folder / "model_fp32.onnx").unlink()
    assert "no model file model_fp32.onnx" in _model_error(folder)
    assert "model_int8.onnx" in _model_error(make_bundle(tmp_path / "ok"), model_file="model_int8.onnx")


def test_model_input_shape_disagrees_with_metadata(tmp_path):
    folder = make_bundle(tmp_path / "shape", size=SIZE, model_size=48)
    message = _model_error(folder)
    assert "48x48" in message and f"{SIZE}x{SIZE}" in message and "model_fp32.onnx" in message


def test_channels_first_model_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "nchw")
    model = quadrant_model(input_shape=["N", 3, SIZE, SIZE])
    onnx.save(model, folder / "model_fp32.onnx")
    assert "channels-first" in _model_error(folder)


def test_output_count_disagrees_with_classes(tmp_path, scans):
    folder = make_bundle(tmp_path / "five")
    onnx.save(quadrant_model(classes=5), folder / "model_fp32.onnx")
    clf = Classifier.from_bundle(folder)
    with pytest.raises(ModelError, match="names 4 classes"):
        clf.predict(scans[0])


def test_corrupt_and_unsupported_model_files(tmp_path):
    folder = make_bundle(tmp_path / "corrupt")
    (folder / "model_fp32.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert "onnxruntime cannot load" in _model_error(folder)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    BundleMetadata(list(CLASSES), quadrant_metadata().preprocessing).write(tmp_path)
    assert "unsupported model format" in _model_error(other)
    assert "no such bundle" in _model_error(tmp_path / "nothing")
