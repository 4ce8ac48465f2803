"""Backends: the complete protocol, the engine registry, and optimised twins: never loaded in place of a bundle's
model (0.1.0 trusted a twin whose size matched, then one whose own record vouched for it, so a stale, foreign or
forged twin ran instead of the listed model), still usable when named directly and listed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.runtime.models import quadrant_image, quadrant_model
from tumor_edge.contracts.bundle import (
    ONNX_META_KEY,
    BundleMetadata,
    describe_file,
    is_optimized_name,
    optimized_model_name,
)
from tumor_edge.contracts.formats import ENGINES
from tumor_edge.errors import ConfigError, ModelError
from tumor_edge.runtime import BackendOptions, Classifier, open_backend, save_optimized_model
from tumor_edge.runtime.backends import (
    OPTIMIZED_META_KEY,
    Backend,
    append_metadata_prop,
    backend_factory,
    machine_target,
    read_optimized_record,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own optimised-model cache, so twins are what is under test."""
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
    assert backend.input_hw() == (32, 32) and backend.input_shape[1:] == [32, 32, 3]
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


def test_naming_convention():
    assert optimized_model_name("model_int8.onnx") == "model_int8.ort.onnx"
    assert is_optimized_name("model_int8.ort.onnx") and not is_optimized_name("model_int8.onnx")


def test_append_metadata_prop_is_valid_onnx(fresh_bundle):
    path = fresh_bundle / "model_fp32.onnx"
    append_metadata_prop(path, "extra.key", "ünïcode value " * 20)
    props = _props(path)
    assert props["extra.key"] == "ünïcode value " * 20
    assert ONNX_META_KEY in props  # the existing entry survives
    assert {p.key for p in onnx.load(str(path)).metadata_props} == {ONNX_META_KEY, "extra.key"}


def test_save_and_use_optimized_twin(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name), threads=1)
    record = read_optimized_record(twin)
    assert record["level"] == "all" and record["target"] == machine_target()
    assert record["source_sha256"] == BundleMetadata.read(fresh_bundle).models[src.name].sha256
    assert json.loads(_props(twin)[OPTIMIZED_META_KEY]) == record
    assert ONNX_META_KEY in _props(twin)  # tumor-edge metadata kept: a lone twin still classifies

    clf = Classifier.from_bundle(fresh_bundle)  # a twin beside the model is not loaded in its place (issue 22)
    assert clf.model_path != twin and clf.backend.source_kind == "cache-built"
    with pytest.raises(ModelError, match="not listed"):  # an unlisted file has no hash to check
        Classifier.from_bundle(twin)
    meta = BundleMetadata.read(fresh_bundle)
    meta.models[twin.name] = describe_file(twin, "onnx", "fp32", ort_optimized_from=src.name)
    meta.write(fresh_bundle)
    named = Classifier.from_bundle(twin)  # named and listed with its sha256: runs as the optimised graph it is
    assert named.model_path == twin and named.backend.source_kind == "twin"
    plain = Classifier.from_bundle(fresh_bundle, options=BackendOptions(use_optimized=False))
    assert plain.model_path == src
    assert np.allclose(named.infer(_pixels()), plain.infer(_pixels()), atol=1e-6)
    assert named.predict(_pixels()[1]).label == "meningioma"


def test_twin_from_another_machine_is_ignored(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name))
    record = read_optimized_record(twin)
    other = dict(record, target=dict(record["target"], isa="asimddp", machine="aarch64"))
    append_metadata_prop(twin, OPTIMIZED_META_KEY, json.dumps(other))  # the last record wins
    assert read_optimized_record(twin)["target"]["machine"] == "aarch64"
    assert open_backend(src).loaded_path != twin


def test_stale_twin_of_the_same_size_is_never_loaded(fresh_bundle):
    """Finding: 0.1.0 bound a twin to its source by size. A retrained model of the same architecture has the same
    size, so the old twin (the old weights) ran and gave the old model's answers."""
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name))
    size = src.stat().st_size
    model = onnx.load(str(src))
    bias = next(t for t in model.graph.initializer if t.name == "B")
    bias.float_data[:] = [0.0, 0.0, 0.0, 100.0]  # the "retrained" model always says pituitary
    onnx.save(model, src)
    assert src.stat().st_size == size
    meta = BundleMetadata.read(fresh_bundle)
    meta.models[src.name] = describe_file(src, "onnx", "fp32")
    meta.write(fresh_bundle)

    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.model_path != twin
    assert [p.label for p in clf.predict_batch(list(_pixels()))] == ["pituitary"] * 4


def test_unbound_01_twin_is_ignored(fresh_bundle):
    """A twin with a 0.1.0 record (size only, no sha256) cannot prove what it was made from."""
    src = fresh_bundle / "model_fp32.onnx"
    twin = fresh_bundle / optimized_model_name(src.name)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(twin)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    append_metadata_prop(twin, OPTIMIZED_META_KEY, json.dumps(
        {"level": "all", "source": src.name, "source_size": src.stat().st_size, "target": machine_target()}))
    assert open_backend(src).loaded_path != twin


def test_damaged_twin_is_ignored(fresh_bundle):
    """Finding: a twin was trusted by size alone; one changed byte inside it now fails its own sha256."""
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name))
    data = bytearray(twin.read_bytes())
    at = data.find(np.float32(0.05 / (16 * 16 * 3)).tobytes())  # a weight of the quadrant model
    assert at > 0
    data[at + 3] ^= 0x40
    twin.write_bytes(bytes(data))
    assert open_backend(src).loaded_path != twin

    twin.write_bytes(b"\x08\x07junk" * 50 + twin.read_bytes()[-600:])  # only the record survives
    assert open_backend(src).loaded_path != twin


def test_portable_extended_twin(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name), level="extended")
    assert read_optimized_record(twin)["level"] == "extended"
    assert open_backend(src).loaded_path != twin  # portable or not, a sibling is never loaded in src's place
    assert open_backend(twin).loaded_path == twin
    with pytest.raises(ConfigError):
        save_optimized_model(src, fresh_bundle / "x.ort.onnx", level="basic")


def test_save_optimized_model_reports_bad_source(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelError, match="cannot optimise"):
        save_optimized_model(bad, tmp_path / "bad.ort.onnx")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


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
    assert backend.input_hw() == (16, 16) and backend.providers == []
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
    from tumor_edge.runtime.backends.options import BackendOptions, session_options

    so = session_options(ort, BackendOptions(threads=threads, spin=spin, spin_within_run=within), "all")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == allow
    if stop is None:
        with pytest.raises(RuntimeError):  # onnxruntime raises for an entry never set
            so.get_session_config_entry("session.force_spinning_stop")
    else:
        assert so.get_session_config_entry("session.force_spinning_stop") == stop
