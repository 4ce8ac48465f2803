"""The format table is the one list of formats: everything derived from it agrees with it."""

from __future__ import annotations

import pytest

from tumor_edge.contracts import formats
from tumor_edge.contracts.formats import FORMATS, ModelFormat


def test_keys_and_files_are_unique_and_suffixes_match_engines():
    assert len({f.key for f in FORMATS}) == len(FORMATS)
    assert len({f.file for f in FORMATS}) == len(FORMATS)
    for f in FORMATS:
        assert f.file.endswith(formats.ENGINES[f.engine].suffix), f
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


def test_every_row_has_a_registered_converter_and_every_converter_a_row():
    from tumor_edge.export.formats import converter_for, load_converters

    for f in FORMATS:
        assert converter_for(f.key).__module__.startswith("tumor_edge.export.formats."), f
    assert set(load_converters()) == {f.key for f in FORMATS}


def test_importing_the_table_and_the_converters_loads_no_engine():
    """A device without TensorFlow reads the table; the converters' modules load in TensorFlow-free children."""
    import subprocess
    import sys

    code = ("import sys; import tumor_edge.contracts.formats; from tumor_edge.export.formats import load_converters\n"
            "load_converters()\n"
            "print(sorted(m for m in ('numpy', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'tf2onnx') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_engine_has_a_runtime_backend_named_by_its_row():
    from tumor_edge.runtime.backends import backend_factory

    for name, engine in formats.ENGINES.items():
        assert engine.backend.startswith("tumor_edge.runtime.backends."), engine
        factory = backend_factory(name)
        assert factory.name == name and factory.__module__ == engine.backend
        assert all(callable(getattr(factory, m, None)) for m in ("input_hw", "run", "metadata_props")), factory


def test_an_engine_suffix_is_claimed_once():
    with pytest.raises(ValueError, match="which 'onnxruntime' runs"):
        formats.register_engine(formats.Engine("other", (".onnx",), "tumor_edge.runtime.backends.x"))
    with pytest.raises(ValueError, match="lower-case"):
        formats.Engine("other", (".ONNX",), "tumor_edge.runtime.backends.x")
    assert "other" not in formats.ENGINES


def test_a_two_file_engine_lists_its_companions():
    engine = formats.Engine("pair", (".xml", ".bin"), "tumor_edge.runtime.backends.pair")
    assert engine.suffix == ".xml" and engine.companions("model_fp32.xml") == ("model_fp32.bin",)
    assert formats.ENGINES["onnxruntime"].companions("model_fp32.onnx") == ()


def test_lookup_helpers():
    assert formats.format_of("model_int8.tflite") == formats.BY_KEY["tflite-int8"]
    assert formats.format_of("other.onnx") is None
    assert formats.engine_for_suffix(".ONNX") == "onnxruntime"
    assert isinstance(FORMATS[0], ModelFormat)
