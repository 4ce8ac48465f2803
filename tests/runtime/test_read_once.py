"""The bytes checked are the bytes run: a model file exchanged between its check and the engine's load never runs,
and leaves nothing behind that a later run would use.

The race is made deterministic by a hook in onnxruntime's session constructor: the moment the engine is asked for
a session, the bundle's model file is replaced by another model (everything before that point, hashing included,
saw the signed file), and put back as soon as the session exists. An engine that reads the file by path then runs
the other model, and a cache filled from that read (as an optimised-model cache keyed by the checked file's
sha256 was) keeps running it after the file is restored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from tests.runtime.models import CLASSES, quadrant_image, quadrant_metadata, quadrant_model
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.runtime.choice import CACHE_DIR_ENV, NO_CACHE_ENV

MODEL = "model_fp32.onnx"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    monkeypatch.delenv("TUMOR_EDGE_TRUST", raising=False)


def _replace(path, data: bytes) -> None:
    """Put a new file with `data` in place of `path` (a rename: the old file lives on for whoever has it open or
    mapped), as an attacker who can write the folder would."""
    spare = path.with_name(path.name + ".new")
    spare.write_bytes(data)
    os.replace(spare, path)


def _swap_while_loading(monkeypatch, module, name: str, model: Path, other: bytes, signed: bytes) -> list:
    """Patch the engine's loader `module.name` so that `model` holds `other` while each load runs and `signed`
    again as soon as it returns. Returns the list of loaders made (one per load)."""
    made = []
    engine_class = getattr(module, name)

    class Swapping(engine_class):
        def __init__(self, *args, **kwargs):
            _replace(model, other)
            try:
                super().__init__(*args, **kwargs)
            finally:
                _replace(model, signed)
            made.append(self)

    monkeypatch.setattr(module, name, Swapping)
    return made


def _labels(clf: Classifier) -> list[str]:
    return [p.label for p in clf.predict_batch([quadrant_image(q, 32) for q in range(4)])]


def _always_glioma() -> bytes:
    """The quadrant model, same metadata, with a bias that makes every answer 'glioma'."""
    model = quadrant_model(metadata=quadrant_metadata())
    next(t for t in model.graph.initializer if t.name == "B").float_data[:] = [100.0, 0.0, 0.0, 0.0]
    return model.SerializeToString()


@pytest.fixture()
def swap_at_load(fresh_bundle, monkeypatch):
    """Every onnxruntime session made while this is on sees the bundle's model file replaced by another model; the
    file is restored as soon as the session exists. Yields the list of sessions made (one per load)."""
    model = fresh_bundle / MODEL
    signed, other = model.read_bytes(), _always_glioma()
    return _swap_while_loading(monkeypatch, onnxruntime, "InferenceSession", model, other, signed)


def test_a_model_exchanged_between_check_and_load_never_runs(fresh_bundle, swap_at_load):
    """Finding (high): the model was hashed, then opened again by path; the file exchanged in between ran."""
    clf = Classifier.from_bundle(fresh_bundle, options=BackendOptions(threads=1))
    assert swap_at_load, "the hook did not run: the test proves nothing"
    assert _labels(clf) == CLASSES


def test_an_exchanged_model_never_poisons_the_cache(fresh_bundle, swap_at_load, monkeypatch):
    """Finding (high): the optimised copy built from the exchanged bytes was cached under the signed file's sha256,
    so every later run kept answering with the other model after the file was restored."""
    Classifier.from_bundle(fresh_bundle)
    monkeypatch.undo()  # no more exchanges: the signed file stays in place from here on
    monkeypatch.setenv(CACHE_DIR_ENV, str(fresh_bundle.parent / "cache"))
    assert _labels(Classifier.from_bundle(fresh_bundle)) == CLASSES


def test_the_engine_gets_the_checked_bytes_not_a_path(fresh_bundle, swap_at_load):
    Classifier.from_bundle(fresh_bundle)
    assert all(isinstance(s._model_bytes, bytes) for s in swap_at_load)
    onnx.checker.check_model(onnx.load_from_string(swap_at_load[-1]._model_bytes))


def test_a_lone_model_is_read_once_too(tmp_path, monkeypatch):
    lone = tmp_path / "lone.onnx"
    onnx.save(quadrant_model(metadata=quadrant_metadata()), lone)
    signed = lone.read_bytes()
    _swap_while_loading(monkeypatch, onnxruntime, "InferenceSession", lone, _always_glioma(), signed)
    assert _labels(Classifier.from_bundle(lone)) == CLASSES
    assert np.array_equal(np.frombuffer(lone.read_bytes(), np.uint8), np.frombuffer(signed, np.uint8))


def _tflite_always(tf, keras, index: int) -> bytes:
    """A tiny .tflite classifier (16 px) whose bias makes every answer class `index`."""
    image = keras.Input((16, 16, 3), name="image")
    dense = keras.layers.Dense(4, activation="softmax", name="scores")
    model = keras.Model(image, dense(keras.layers.Flatten()(image)))
    bias = np.zeros(4, np.float32)
    bias[index] = 100.0
    dense.set_weights([np.zeros((16 * 16 * 3, 4), np.float32), bias])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def litert_models():
    """(signed, other): two .tflite files answering 'pituitary' and 'glioma' to everything."""
    pytest.importorskip("ai_edge_litert")
    tf = pytest.importorskip("tensorflow")
    import keras

    return _tflite_always(tf, keras, 3), _tflite_always(tf, keras, 0)


def test_a_litert_model_exchanged_between_check_and_load_never_runs(tmp_path, monkeypatch, litert_models):
    """The same race through LiteRT: the interpreter is given the checked bytes (`model_content`)."""
    import ai_edge_litert.interpreter as litert

    from tumor_edge.contracts.bundle import BundleMetadata, describe_file
    from tumor_edge.contracts.preprocessing import Preprocessing

    signed, other = litert_models
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    model = bundle / "model_fp32.tflite"
    model.write_bytes(signed)
    meta = BundleMetadata(list(CLASSES), Preprocessing(16, 16))
    meta.models = {model.name: describe_file(model, "tflite", "fp32")}
    meta.write(bundle)
    made = _swap_while_loading(monkeypatch, litert, "Interpreter", model, other, signed)
    clf = Classifier.from_bundle(bundle)
    assert made, "the hook did not run: the test proves nothing"
    assert [p.label for p in clf.predict_batch([quadrant_image(q, 16) for q in range(4)])] == ["pituitary"] * 4
