"""Backends: pre-optimised ONNX twins (made here, used only where they were made), metadata_props edits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.runtime.models import quadrant_image
from tumor_edge.contracts.bundle import ONNX_META_KEY, is_optimized_name, optimized_model_name
from tumor_edge.errors import ModelError
from tumor_edge.runtime import BackendOptions, Classifier, open_backend, save_optimized_model
from tumor_edge.runtime.backends import (
    OPTIMIZED_META_KEY,
    append_metadata_prop,
    machine_target,
    read_optimized_record,
)


def _props(path) -> dict:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return dict(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                .get_modelmeta().custom_metadata_map)


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
    assert record["source_size"] == src.stat().st_size
    assert json.loads(_props(twin)[OPTIMIZED_META_KEY]) == record
    assert ONNX_META_KEY in _props(twin)  # tumor-edge metadata kept: a lone twin still classifies

    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.model_path == twin
    plain = Classifier.from_bundle(fresh_bundle, options=BackendOptions(use_optimized=False))
    assert plain.model_path == src
    pixels = np.stack([quadrant_image(q, 32) for q in range(4)])
    assert np.allclose(clf.infer(pixels), plain.infer(pixels), atol=1e-6)
    assert Classifier.from_bundle(twin).predict(pixels[1]).label == "meningioma"


def test_twin_from_another_machine_or_source_is_ignored(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name))
    record = read_optimized_record(twin)
    other = dict(record, target=dict(record["target"], isa="asimddp", machine="aarch64"))
    append_metadata_prop(twin, OPTIMIZED_META_KEY, json.dumps(other))  # the last record wins
    assert read_optimized_record(twin)["target"]["machine"] == "aarch64"
    assert open_backend(src).loaded_path == src

    twin = save_optimized_model(src, twin)  # fresh, for this machine
    assert open_backend(src).loaded_path == twin
    append_metadata_prop(src, "changed", "yes")  # the source changed after the twin was made
    assert open_backend(src).loaded_path == src


def test_damaged_twin_falls_back_to_the_source(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name))
    record = twin.read_bytes()[-600:]
    twin.write_bytes(b"\x08\x07junk" * 50 + record)  # still carries a matching record, but is not a model
    assert open_backend(src).loaded_path == src


def test_portable_extended_twin(fresh_bundle):
    src = fresh_bundle / "model_fp32.onnx"
    twin = save_optimized_model(src, fresh_bundle / optimized_model_name(src.name), level="extended")
    assert read_optimized_record(twin)["level"] == "extended"
    assert open_backend(src).loaded_path == twin
    with pytest.raises(ValueError):
        save_optimized_model(src, fresh_bundle / "x.ort.onnx", level="basic")


def test_save_optimized_model_reports_bad_source(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelError, match="cannot optimise"):
        save_optimized_model(bad, tmp_path / "bad.ort.onnx")
