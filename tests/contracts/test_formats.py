"""The format table is the one list of formats: everything derived from it agrees with it."""

from __future__ import annotations

import importlib

import pytest

from tumor_edge.contracts import formats
from tumor_edge.contracts.formats import FORMATS, ModelFormat


def test_keys_and_files_are_unique_and_suffixes_match_engines():
    assert len({f.key for f in FORMATS}) == len(FORMATS)
    assert len({f.file for f in FORMATS}) == len(FORMATS)
    for f in FORMATS:
        assert f.file.endswith(formats.ENGINES[f.engine]), f
        assert f.key == f"{f.format}-{f.precision}"


def test_dependencies_come_earlier_in_the_table():
    seen: set[str] = set()
    for f in FORMATS:
        assert f.needs is None or f.needs in seen, f"{f.key} needs {f.needs}, which comes later"
        seen.add(f.key)


def test_default_preference_is_derived_from_ranks():
    ranked = sorted((f for f in FORMATS if f.default_rank is not None), key=lambda f: f.default_rank)
    assert tuple(f.file for f in ranked) == formats.DEFAULT_MODEL_PREFERENCE
    assert formats.DEFAULT_MODEL_PREFERENCE[0] == "model_int8.onnx"


@pytest.mark.parametrize("containers,options,expected", [
    (("onnx",), set(), ["onnx-fp32"]),
    (("onnx", "tflite"), {"int8"}, ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]),
    (("tflite",), {"fp16", "int8"}, ["tflite-fp32", "tflite-fp16", "tflite-int8"]),
])
def test_select(containers, options, expected):
    assert [f.key for f in formats.select(containers, options)] == expected


def test_every_converter_is_a_module_function_string():
    for f in FORMATS:
        module, _, function = f.converter.partition(":")
        assert module.startswith("tumor_edge.export.") and function, f


def test_every_engine_has_a_runtime_backend():
    backends = importlib.import_module("tumor_edge.runtime.backends")
    registry = getattr(backends, "ENGINE_BACKENDS", None) or backends.BACKENDS
    for engine, suffix in formats.ENGINES.items():
        assert engine in registry or suffix in registry, engine


def test_lookup_helpers():
    assert formats.format_of("model_int8.tflite") == formats.BY_KEY["tflite-int8"]
    assert formats.format_of("other.onnx") is None
    assert formats.engine_for_suffix(".ONNX") == "onnxruntime"
    assert isinstance(FORMATS[0], ModelFormat)
