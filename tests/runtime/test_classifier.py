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
from tumor_edge.contracts.bundle import BundleMetadata, describe_file
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
    probs = clf.probabilities_for_files(scans, batch_size=3)
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


def _replace_model(folder, proto_or_bytes, name: str = "model_fp32.onnx") -> None:
    """Put another model file in a bundle and record its real size and sha256 (so the integrity check passes
    and the check under test is the one that speaks)."""
    path = folder / name
    if isinstance(proto_or_bytes, bytes):
        path.write_bytes(proto_or_bytes)
    else:
        onnx.save(proto_or_bytes, path)
    meta = BundleMetadata.read(folder)
    meta.models[name] = describe_file(path, "onnx", "fp32")
    meta.write(folder)


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
    _replace_model(folder, quadrant_model(input_shape=["N", 3, SIZE, SIZE]))
    assert "channels-first" in _model_error(folder)


def test_output_count_disagrees_with_classes(tmp_path, scans):
    folder = make_bundle(tmp_path / "five")
    _replace_model(folder, quadrant_model(classes=5))
    clf = Classifier.from_bundle(folder)
    with pytest.raises(ModelError, match="names 4 classes"):
        clf.predict(scans[0])


def test_corrupt_and_unsupported_model_files(tmp_path):
    folder = make_bundle(tmp_path / "corrupt")
    _replace_model(folder, b"\x08\x07garbage" * 10)
    message = _model_error(folder)  # the external data walk may see it before onnxruntime does
    assert "onnxruntime cannot load" in message or "not a valid ONNX model" in message
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    BundleMetadata(list(CLASSES), quadrant_metadata().preprocessing).write(tmp_path)
    assert "unsupported model format" in _model_error(other)
    assert "no such bundle" in _model_error(tmp_path / "nothing")


# ---- multi-output models: roles come from metadata, not code --------------------------------------------------


def _two_output_bundle(folder):
    """The quadrant model with a second output, a per-pixel mean 'heatmap' [N, 32, 32], declared in metadata."""
    from onnx import TensorProto, helper

    from tumor_edge.contracts.bundle import OutputSpec

    folder.mkdir(parents=True)
    meta = quadrant_metadata()
    meta.extra_outputs = {"heatmap": OutputSpec("heatmap", 1, "mean intensity", "test map")}
    model = quadrant_model(metadata=meta)
    model.graph.node.append(helper.make_node("ReduceMean", ["image"], ["heat"], axes=[3], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["N", SIZE, SIZE]))
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model_fp32.onnx")
    meta.models = {"model_fp32.onnx": describe_file(folder / "model_fp32.onnx", "onnx", "fp32")}
    meta.write(folder)
    return folder


def test_second_output_arrives_on_the_prediction(tmp_path, scans):
    folder = _two_output_bundle(tmp_path / "two")
    clf = Classifier.from_bundle(folder)
    assert clf.backend.output_names == ["probs", "heat"]
    results = list(clf.iter_predictions(scans, batch_size=3))
    assert [r.label for r in results] == CLASSES
    for q, result in enumerate(results):
        heat = result.outputs["heatmap"]
        assert heat.shape == (SIZE, SIZE)
        expected = quadrant_image(q, SIZE).astype(np.float32).mean(axis=-1)  # the 64-px scan resized to 32 px
        assert abs(float(heat.mean()) - float(expected.mean())) < 5
        assert result.to_dict()["outputs"]["heatmap"] == heat.tolist()
    single = clf.predict(scans[2])
    assert np.array_equal(single.outputs["heatmap"], results[2].outputs["heatmap"])
    # A one-output bundle's JSON has no outputs key.
    plain = Classifier.from_bundle(make_bundle(tmp_path / "one")).predict(scans[0]).to_dict()
    assert set(plain) == {"file", "label", "confidence", "probabilities"}


def test_metadata_naming_a_missing_output_is_refused(tmp_path):
    from tumor_edge.contracts.bundle import OutputSpec

    folder = make_bundle(tmp_path / "one")
    meta = BundleMetadata.read(folder)
    meta.extra_outputs = {"heatmap": OutputSpec("heatmap", 1, "map")}
    meta.write(folder)
    assert "output 'heatmap' at index 1, but the model has 1 output" in _model_error(folder)


# ---- integrity: the model that runs is the model the metadata describes --------------------------------------


def test_tampered_model_is_refused_before_any_result(tmp_path, scans):
    """Finding: the sha256 in metadata.json was never checked; flipped bytes silently gave another label."""
    from tumor_edge.errors import BundleIntegrityError

    folder = make_bundle(tmp_path / "tampered")
    path = folder / "model_fp32.onnx"
    data = bytearray(path.read_bytes())
    at = data.find(np.float32(0.05 / (16 * 16 * 3)).tobytes())
    data[at + 3] ^= 0x7F  # one weight becomes huge: a different model of the same size
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError) as err:
        Classifier.from_bundle(folder)
    assert "sha256" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BundleIntegrityError):
        Classifier.from_bundle(path)  # the file named directly, metadata beside it
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert "truncated" in _model_error(folder)


def test_model_names_cannot_leave_the_bundle(tmp_path):
    """Finding: a model name such as ../other/model_fp32.onnx or an absolute path loaded a file outside."""
    from tumor_edge.errors import BundleIntegrityError

    outside = make_bundle(tmp_path / "other")
    folder = make_bundle(tmp_path / "b")
    for name in ("../other/model_fp32.onnx", str(outside / "model_fp32.onnx")):
        with pytest.raises(BundleIntegrityError):
            Classifier.from_bundle(folder, model_file=name)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["models"] = {"../other/model_fp32.onnx": meta["models"]["model_fp32.onnx"]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert "not a plain file name" in _model_error(folder)
    linked = make_bundle(tmp_path / "linked")
    (linked / "model_fp32.onnx").unlink()
    (linked / "model_fp32.onnx").symlink_to(outside / "model_fp32.onnx")
    assert "outside the bundle" in _model_error(linked)


def test_unlisted_model_file_is_refused(tmp_path):
    folder = make_bundle(tmp_path / "b")
    onnx.save(quadrant_model(), folder / "model_int8.onnx")
    assert "not listed" in _model_error(folder, model_file="model_int8.onnx")


# ---- one prediction path -----------------------------------------------------------------------------------


def test_every_call_decodes_a_series_the_same_way(clf, tmp_path, scans):
    volume = np.stack([quadrant_image(q, grey=False).astype(np.uint16) * 10 for q in (0, 1, 3)])
    series = write_dicom(tmp_path / "series.dcm", volume)
    streamed = next(iter(clf.iter_predictions([series])))
    single = clf.predict(series)
    batch = clf.predict_batch([scans[0], series])[1]
    probs = clf.probabilities_for_files([scans[0], series], batch_size=2)
    assert streamed.label == single.label == batch.label == "meningioma"  # the middle frame, everywhere
    assert single.probabilities == streamed.probabilities == batch.probabilities
    assert np.array_equal(probs[1], np.array([streamed.probabilities[c] for c in CLASSES], np.float32))
    assert np.array_equal(clf.probabilities_for_files([series]), probs[1:])


def test_probabilities_for_files_stops_at_the_first_bad_file(clf, scans, tmp_path):
    from tumor_edge.errors import InputImageError

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputImageError) as err:
        clf.probabilities_for_files([scans[0], bad, scans[1]])
    assert str(bad) in str(err.value)
    with pytest.raises(InputImageError):
        clf.predict(bad)
    assert clf.probabilities_for_files([]).shape == (0, 4)


def test_iter_predictions_takes_one_path_as_one_file(clf, scans):
    """Finding: iter_predictions("file.jpg") iterated the name's characters."""
    assert [r.label for r in clf.iter_predictions(str(scans[1]))] == ["meningioma"]
    assert [r.label for r in clf.iter_predictions(scans[2])] == ["notumor"]
    from tumor_edge.errors import ConfigError

    with pytest.raises(ConfigError):
        list(clf.iter_predictions(scans, batch_size=0))
    with pytest.raises(ConfigError):  # once, not as a failure per file
        list(clf.iter_predictions(scans, frames="first"))


def test_failures_keep_no_decoded_image_alive(tmp_path, monkeypatch):
    """A failure must not keep its partly decoded image alive through the exception's traceback frames: it keeps
    its message and a printable traceback only."""
    import gc
    import io
    import traceback
    import weakref

    from tumor_edge.runtime.classifier import decode_file

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    opened = []
    real_open = Image.open

    def watching_open(*args, **kwargs):
        image = real_open(*args, **kwargs)
        opened.append(weakref.ref(image))
        return image

    monkeypatch.setattr(Image, "open", watching_open)
    decoded = [decode_file(path, quadrant_metadata().preprocessing) for _ in range(5)]
    gc.collect()
    assert len(opened) == 5 and all(d.failure is not None for d in decoded)
    assert [ref() for ref in opened] == [None] * 5
    error = decoded[0].failure.error
    assert "truncated" in decoded[0].failure.message
    assert "Traceback" in "".join(traceback.format_exception(error))  # still printable for --debug
