"""Backends: the complete protocol, the engine registry, options, and LiteRT's output order."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.runtime.models import quadrant_image, quadrant_model
from tumor_edge.contracts.bundle import ONNX_META_KEY, BundleMetadata, describe_file
from tumor_edge.contracts.formats import ENGINES
from tumor_edge.errors import ConfigError
from tumor_edge.runtime import BackendOptions, Classifier, open_backend
from tumor_edge.runtime.backends import Backend, backend_factory, hw_of


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own device cache."""
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))


def _props(path) -> dict:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return dict(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                .get_modelmeta().custom_metadata_map)


def _pixels() -> np.ndarray:
    return np.stack([quadrant_image(q, 32) for q in range(4)])


def test_registry_is_keyed_by_the_format_tables_engines():
    for engine in ENGINES:
        assert backend_factory(engine).name == engine


def test_protocol_is_complete_without_getattr(bundle):
    backend = open_backend(bundle / "model_fp32.onnx")
    assert isinstance(backend, Backend)
    assert backend.name == "onnxruntime" and backend.path == bundle / "model_fp32.onnx"
    assert hw_of(backend.input_shape) == (32, 32) and backend.input_shape[1:] == [32, 32, 3]
    assert backend.output_names == ["probs"]
    outputs = backend.run(np.zeros((2, 32, 32, 3), np.float32))
    assert isinstance(outputs, list) and len(outputs) == 1 and outputs[0].shape == (2, 4)
    assert ONNX_META_KEY in backend.metadata_props()
    assert backend.providers == ["CPUExecutionProvider"] and backend.missing_providers == []
    for member in Backend.__annotations__:  # every protocol attribute is set (no caller needs getattr)
        assert hasattr(backend, member), member


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        BackendOptions(optimization="max")
    with pytest.raises(ConfigError):
        BackendOptions(threads=0)
    assert BackendOptions(providers="CPU").providers == ["CPU"]


def test_quadrant_model_helper_still_builds():
    assert quadrant_model().graph.output[0].name == "probs"


@pytest.fixture(scope="module")
def two_output_tflite(tmp_path_factory):
    """A real two-output Keras model converted to .tflite: [scores (N, 4), heatmap (N, 16, 16)]."""
    tf = pytest.importorskip("tensorflow")
    import keras

    image = keras.Input((16, 16, 3), name="image")
    scores = keras.layers.Dense(4, activation="softmax", name="scores")(keras.layers.Flatten()(image))
    heatmap = keras.layers.Lambda(lambda x: tf.reduce_mean(x, axis=-1), name="heatmap")(image)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, [scores, heatmap]))
    folder = tmp_path_factory.mktemp("tflite") / "bundle"
    folder.mkdir()
    (folder / "model_fp32.tflite").write_bytes(converter.convert())
    from tumor_edge.contracts.bundle import OutputSpec
    from tumor_edge.contracts.preprocessing import Preprocessing

    meta = BundleMetadata(["glioma", "meningioma", "notumor", "pituitary"], Preprocessing(16, 16),
                          extra_outputs={"heatmap": OutputSpec("heatmap", 1, "mean")})
    meta.models = {"model_fp32.tflite": describe_file(folder / "model_fp32.tflite", "tflite", "fp32")}
    meta.write(folder)
    return folder


def test_litert_returns_every_output_in_model_order(two_output_tflite):
    """Finding while splitting: LiteRT lists a converted model's outputs as [heatmap, scores]; taken in that
    order, metadata's roles would swap."""
    backend = open_backend(two_output_tflite / "model_fp32.tflite")
    assert isinstance(backend, Backend) and backend.name == "litert" and backend.metadata_props() == {}
    assert hw_of(backend.input_shape) == (16, 16) and backend.providers == []
    outputs = backend.run(np.full((3, 16, 16, 3), 7.0, np.float32))
    assert [o.shape for o in outputs] == [(3, 4), (3, 16, 16)]
    assert np.allclose(outputs[1], 7.0)
    prediction = Classifier.from_bundle(two_output_tflite).predict(quadrant_image(0, 16))
    assert prediction.outputs["heatmap"].shape == (16, 16)
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-5


@pytest.mark.parametrize("spin, within, threads, allow, stop", [
    (False, False, 2, "0", None), (True, False, 2, "1", None), (False, True, 2, "1", "1"),
    (False, True, 1, "0", None),  # one thread: no pool to wake
    (True, True, 2, "1", None),  # spinning always wins over spinning within a run
])
def test_spinning_within_a_run_stops_when_the_run_ends(spin, within, threads, allow, stop):
    from tumor_edge.runtime.backends import BackendOptions, session_options

    so = session_options(ort, BackendOptions(threads=threads, spin=spin, spin_within_run=within))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == allow
    if stop is None:
        with pytest.raises(RuntimeError):  # onnxruntime raises for an entry never set
            so.get_session_config_entry("session.force_spinning_stop")
    else:
        assert so.get_session_config_entry("session.force_spinning_stop") == stop


def test_memory_pattern_follows_the_arena():
    """One batch: neither (lower peak); many batches: both (flat memory). A pattern without the arena only grows
    the heap run after run."""
    from tumor_edge.runtime.backends import session_options

    one = session_options(ort, BackendOptions(optimization="none"))
    assert not one.enable_cpu_mem_arena and not one.enable_mem_pattern
    many = session_options(ort, BackendOptions(memory_arena=True, optimization="none"))
    assert many.enable_cpu_mem_arena and many.enable_mem_pattern
