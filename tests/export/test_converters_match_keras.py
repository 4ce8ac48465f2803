"""The runtime against real TensorFlow exports of a tiny Keras model: tf2onnx ONNX and LiteRT .tflite (fp32 and
full int8 with uint8 input) give the Keras probabilities through `Classifier`, from image files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.runtime.models import CLASSES, quadrant_image, save_quadrant
from tumor_edge.contracts.bundle import ONNX_META_KEY, BundleMetadata, describe_file
from tumor_edge.runtime import Classifier
from tumor_edge.runtime.preprocess import Preprocessing, load_resized

pytestmark = pytest.mark.slow
SIZE = 40


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    tf2onnx = pytest.importorskip("tf2onnx")
    import onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # as the real model: scaling inside the graph
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    folder = tmp_path_factory.mktemp("tf") / "bundle"
    folder.mkdir()
    metadata = BundleMetadata(list(CLASSES), Preprocessing(SIZE, SIZE))
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=(tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),), opset=17)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(metadata.to_dict())
    onnx.save(proto, folder / "model_fp32.onnx")

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (folder / "model_fp32.tflite").write_bytes(converter.convert())
    calibration = [quadrant_image(q % 4, SIZE).astype(np.float32)[None] for q in range(16)]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([c] for c in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    (folder / "model_int8.tflite").write_bytes(converter.convert())

    metadata.models = {name: describe_file(folder / name, name.split(".")[1], precision)
                       for name, precision in (("model_fp32.onnx", "fp32"), ("model_fp32.tflite", "fp32"),
                                               ("model_int8.tflite", "int8"))}
    metadata.write(folder)

    scans = [save_quadrant(folder.parent / "scans" / f"s{i}.jpg", i % 4, size=64 + i, quality=90)
             for i in range(8)]
    pixels = np.stack([load_resized(p, metadata.preprocessing) for p in scans])
    reference = model.predict(pixels.astype(np.float32), verbose=0)
    return folder, scans, reference


def _probs(classifier: Classifier, scans) -> np.ndarray:
    results = [r for r in classifier.iter_predictions(scans, batch_size=3)]
    assert all(r.ok for r in results)
    return np.array([[r.probabilities[c] for c in CLASSES] for r in results])


def test_tf2onnx_model_matches_keras(exported):
    folder, scans, reference = exported
    for source in (folder, folder / "model_fp32.onnx"):
        probs = _probs(Classifier.from_bundle(source), scans)
        assert np.abs(probs - reference).max() < 1e-5


def test_litert_fp32_matches_keras(exported):
    pytest.importorskip("ai_edge_litert")
    folder, scans, reference = exported
    classifier = Classifier.from_bundle(folder, model_file="model_fp32.tflite")
    assert classifier.backend.name == "litert"
    assert np.abs(_probs(classifier, scans) - reference).max() < 1e-5


def test_litert_int8_uint8_input_is_close(exported):
    pytest.importorskip("ai_edge_litert")
    folder, scans, reference = exported
    probs = _probs(Classifier.from_bundle(folder / "model_int8.tflite"), scans)
    assert np.abs(probs - reference).max() < 0.08  # quantisation noise, not a preprocessing mismatch
