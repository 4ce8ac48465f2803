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
    assert tuple(f.file for f in ranked) == formats.default_model_preference()
    assert formats.default_model_preference()[0] == "model_int8.onnx"


def test_every_lookup_reads_the_tables_when_called(monkeypatch):
    """A row added to the table (a new format, a test's) is seen by every lookup derived from it, through the
    functions and through the module's names alike: none keeps a copy taken at import."""
    row = ModelFormat("onnx-int4", "onnxq", "int4", "model_int4.onnx", "onnxruntime", enabled_by="int4",
                      default_rank=-1)
    monkeypatch.setattr(formats, "FORMATS", (*FORMATS, row))
    assert formats.format_of("model_int4.onnx") is row and formats.by_key()["onnx-int4"] is row
    assert formats.BY_KEY["onnx-int4"] is row and formats.BY_FILE["model_int4.onnx"] is row
    assert formats.containers()[-1] == "onnxq" == formats.CONTAINERS[-1]
    assert formats.enabling_options()[-1] == "int4" == formats.ENABLING_OPTIONS[-1]
    assert formats.default_model_preference()[0] == "model_int4.onnx" == formats.DEFAULT_MODEL_PREFERENCE[0]
    assert "model_int4.onnx" in formats.bundle_model_files() and "model_int4.onnx" in formats.BUNDLE_MODEL_FILES
    assert formats.format_suffixes("onnxq") == (".onnx",) and "onnxq" in formats.format_names()


@pytest.mark.parametrize("containers,options,expected", [
    (("onnx",), set(), ["onnx-fp32"]),
    (("onnx", "tflite"), {"int8"}, ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]),
    (("tflite",), {"fp16", "int8"}, ["tflite-fp32", "tflite-fp16", "tflite-int8"]),
])
def test_select(containers, options, expected):
    assert [f.key for f in formats.select(containers, options)] == expected


def test_every_row_has_a_registered_converter_and_every_converter_a_row():
    from tumor_edge.export.formats import converter_for, load_converters

    for f in FORMATS:  # a converter module of export/formats/, or the engine's own backend module
        module = converter_for(f.key).__module__
        assert module.startswith("tumor_edge.export.formats.") or module == formats.ENGINES[f.engine].backend, f
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
        assert all(callable(getattr(factory, m, None)) for m in ("run", "metadata_props")), factory


def suffix_clashes(engines) -> dict[str, list[str]]:
    """suffix -> the engines claiming it, where more than one does: one file must never be opened by two."""
    claims: dict[str, list[str]] = {}
    for engine in engines.values():
        for suffix in engine.suffixes:
            claims.setdefault(suffix, []).append(engine.name)
    return {suffix: names for suffix, names in claims.items() if len(names) > 1}


def test_an_engine_suffix_is_claimed_once():
    assert suffix_clashes(formats.ENGINES) == {}
    other = formats.Engine("other", (".onnx",), "tumor_edge.runtime.backends.x")
    assert suffix_clashes({**formats.ENGINES, "other": other}) == {".onnx": ["onnxruntime", "other"]}
    with pytest.raises(ValueError, match="lower-case"):
        formats.Engine("other", (".ONNX",), "tumor_edge.runtime.backends.x")


def test_engine_versions_name_each_engine_by_its_first_installed_distribution(tmp_path, monkeypatch):
    """The device's choice of file is keyed by these: a distribution found under any of an engine's names (a
    dist-info folder spells it with '_'), the first on sys.path winning, and "absent" for none."""
    from importlib import metadata

    versions = formats.engine_versions()
    assert versions["onnxruntime"] == metadata.version("onnxruntime") and set(versions) == set(formats.ENGINES)
    site = tmp_path / "site"
    (site / "Pair_Runtime-2.5.1.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(formats.ENGINES, "pair", formats.Engine("pair", (".pairx",), "x",
                                                                packages=("no-such-dist", "pair.runtime")))
    monkeypatch.setitem(formats.ENGINES, "gone", formats.Engine("gone", (".gone",), "x", packages=("no-such-dist",)))
    versions = formats.engine_versions()
    assert versions["pair"] == "2.5.1" and versions["gone"] == "absent"


def test_a_two_file_engine_lists_its_companions():
    engine = formats.Engine("pair", (".xml", ".bin"), "tumor_edge.runtime.backends.pair")
    assert engine.suffix == ".xml" and engine.companions("model_fp32.xml") == ("model_fp32.bin",)
    assert formats.ENGINES["onnxruntime"].companions("model_fp32.onnx") == ()


def test_lookup_helpers():
    assert formats.format_of("model_int8.tflite") == formats.by_key()["tflite-int8"]
    assert formats.format_of("other.onnx") is None
    assert formats.engine_for_suffix(".ONNX") == "onnxruntime"
    assert isinstance(FORMATS[0], ModelFormat)


# A made-up two-file engine whose converter lives in its backend module (this module), as an engine whose converter
# needs only the engine's own package may: `CONVERTERS` there, a plain dict, so the module imports nothing of export.
PAIR = formats.Engine("pair", (".pairx", ".pairb"), "tests.contracts.test_formats", label="Pair")
PAIR_ROW = ModelFormat("pairir-fp32", "pairir", "fp32", "model_fp32.pairx", "pair", needs="onnx-fp32")


def _convert_pair(ctx, dst):
    dst.write_text("<net/>")
    dst.with_suffix(".pairb").write_bytes(ctx.needs_ok("onnx-fp32").read_bytes())
    return {}


CONVERTERS = {"pairir-fp32": _convert_pair}


@pytest.fixture
def pair_row(monkeypatch):
    """The engine's row and its format row in the tables, for this test only."""
    from tumor_edge.export.formats import CONVERTERS as registered

    monkeypatch.setitem(formats.ENGINES, PAIR.name, PAIR)
    monkeypatch.setattr(formats, "FORMATS", (*FORMATS, PAIR_ROW))
    yield PAIR_ROW
    registered.pop(PAIR_ROW.key, None)


def test_a_converter_can_live_in_its_engines_backend_module(pair_row):
    from tumor_edge.export.formats import converter_for, load_converters

    assert converter_for("pairir-fp32") is _convert_pair
    assert set(load_converters()) == {f.key for f in formats.FORMATS}


def test_the_schema_knows_a_format_by_its_row_not_by_its_suffix(pair_row):
    """A row's container names the format ("pairir"), and its file ends in the engine's suffix (".pairx")."""
    from tests.runtime.models import quadrant_metadata
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.errors import ModelError

    data = quadrant_metadata().to_dict()
    entry = {"format": "pairir", "precision": "fp32", "size_bytes": 6, "sha256": "0" * 64,
             "files": {"model_fp32.pairb": {"size_bytes": 1, "sha256": "1" * 64}}}
    meta = BundleMetadata.from_dict({**data, "models": {"model_fp32.pairx": entry}})
    assert meta.models["model_fp32.pairx"].format == "pairir"
    with pytest.raises(ModelError, match=r"'pairir' but the file name does not end in \.pairx"):
        BundleMetadata.from_dict({**data, "models": {"model_fp32.onnx": entry}})
    with pytest.raises(ModelError, match="unknown format 'pairy'"):
        BundleMetadata.from_dict({**data, "models": {"model_fp32.pairx": {**entry, "format": "pairy"}}})
    assert formats.format_suffixes("pairir") == (".pairx",) and formats.format_suffixes("onnx") == (".onnx",)
