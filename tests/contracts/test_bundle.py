"""The bundle schema: what it writes reads back, old bundles still read, and bad metadata is one clear line."""

from __future__ import annotations

import json

import pytest

from tumor_edge.contracts.bundle import (
    SCHEMA_VERSION,
    BundleMetadata,
    ModelEntry,
    OutputSpec,
    check_member_name,
    member_path,
)
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import BundleIntegrityError, ModelError

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _metadata(**kwargs) -> BundleMetadata:
    meta = BundleMetadata(list(CLASSES), Preprocessing(32, 32), **kwargs)
    meta.models = {"model_fp32.onnx": ModelEntry("model_fp32.onnx", "onnx", "fp32", 10, "a" * 64)}
    return meta


def test_round_trip(tmp_path):
    meta = _metadata(extra_outputs={"heatmap": OutputSpec("heatmap", 1, "class activation map")})
    meta.write(tmp_path)
    back = BundleMetadata.read(tmp_path)
    assert back.to_dict() == meta.to_dict()
    assert json.loads((tmp_path / "metadata.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert list(back.outputs) == ["scores", "heatmap"]


def test_version_1_bundle_still_reads(tmp_path):
    data = _metadata().to_dict()
    data["schema_version"] = 1
    del data["outputs"]
    back = BundleMetadata.from_dict(data)
    assert back.classes == CLASSES and list(back.outputs) == ["scores"]


@pytest.mark.parametrize("change,needle", [
    (lambda d: [], "must be a JSON object"),
    (lambda d: {**d, "schema_version": 99}, "schema_version 99"),
    (lambda d: {**d, "classes": "glioma"}, "'classes' must be a list"),
    (lambda d: {**d, "classes": ["a", "a"]}, "twice"),
    (lambda d: {**d, "classes": []}, "1 to"),
    (lambda d: {**d, "models": [1]}, "'models' must be an object"),
    (lambda d: {**d, "output": {"type": "energy"}}, "output.type"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "height": 10 ** 6}}, "image size"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "height": "32"}}, "whole numbers"),
    (lambda d: {**d, "models": {"m.onnx": {"format": "onnx", "precision": "fp32", "size_bytes": -1}}},
     "size_bytes"),
    (lambda d: {**d, "models": {"m.onnx": {"format": "onnx", "precision": "fp32", "sha256": "xyz"}}}, "sha256"),
    (lambda d: {**d, "models": {"m.onnx": {"format": "exe", "precision": "fp32"}}}, "unknown format"),
])
def test_invalid_metadata_is_one_line_naming_the_field(change, needle):
    with pytest.raises(ModelError) as err:
        BundleMetadata.from_dict(change(_metadata().to_dict()))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["../other/model.onnx", "/etc/passwd", "sub/model.onnx", "..", ".hidden.onnx",
                                  "C:model.onnx", "a\\b.onnx", ""])
def test_model_names_must_stay_inside_the_bundle(name, tmp_path):
    with pytest.raises(BundleIntegrityError):
        check_member_name(name)
    data = _metadata().to_dict()
    data["models"] = {name: {"format": "onnx", "precision": "fp32"}}
    with pytest.raises(ModelError):
        BundleMetadata.from_dict(data)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").symlink_to(outside)
    with pytest.raises(BundleIntegrityError):
        member_path(bundle, "model.onnx")
    (bundle / "ok.onnx").write_bytes(b"x")
    assert member_path(bundle, "ok.onnx") == bundle.resolve() / "ok.onnx"


# ---- property tests: any JSON, any bytes -> BundleMetadata or one ModelError, never another exception --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
_FIELDS = ("schema_version", "classes", "preprocessing", "output", "outputs", "models", "provenance", "metrics",
           "name", "intended_use", "reference")


def _read_or_model_error(data) -> None:
    try:
        meta = BundleMetadata.from_dict(data)
    except ModelError as err:
        assert "\n" not in str(err)
        return
    assert meta.classes and len(set(meta.classes)) == len(meta.classes)
    BundleMetadata.from_dict(meta.to_dict())  # what reads back writes back


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_any_json_is_metadata_or_a_model_error(data):
    _read_or_model_error(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_FIELDS), _json, st.sampled_from(["top", "preprocessing", "model", "outputs", "reference"]))
def test_valid_metadata_with_one_field_replaced(key, value, where):
    data = _metadata(extra_outputs={"heatmap": OutputSpec("heatmap", 1, "map")}).to_dict()
    data["reference"] = {"generator": "g", "seed": 1, "count": 1, "outputs": {"model_fp32.onnx": [[0.25] * 4]}}
    if where == "top":
        data[key] = value
    elif where == "preprocessing":
        data["preprocessing"][key if key in ("height", "width") else "scaling"] = value
    elif where == "model":
        data["models"]["model_fp32.onnx"][key if key in ("size_bytes", "sha256") else "precision"] = value
    elif where == "outputs":
        data["outputs"]["heatmap" if key != "classes" else "scores"] = value
    else:
        data["reference"][key if key in ("seed", "count") else "outputs"] = value
    _read_or_model_error(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_any_metadata_bytes_read_or_fail_in_one_line(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("meta")
    (folder / "metadata.json").write_bytes(raw)
    try:
        BundleMetadata.read(folder)
    except ModelError as err:
        assert "\n" not in str(err)


def test_deeply_nested_metadata_is_one_line(tmp_path):
    (tmp_path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python recurses
    with pytest.raises(ModelError) as err:
        BundleMetadata.read(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change,needle", [
    (lambda d: {**d, "outputs": ["heatmap"]}, "'outputs' must be an object"),
    (lambda d: {**d, "outputs": {"heatmap": {"index": 0}}}, "index"),
    (lambda d: {**d, "outputs": {"a": {"index": 1}, "b": {"index": 1}}}, "reuses output index 1"),
    (lambda d: {**d, "outputs": {"../x": {"index": 1}}}, "output roles"),
    (lambda d: {**d, "name": ["x"]}, "'name' must be a string"),
    (lambda d: {**d, "models": {"m.tflite": {"format": "onnx", "precision": "fp32"}}}, "does not end in .onnx"),
    (lambda d: {**d, "reference": {"generator": "g", "seed": 1, "count": 2,
                                   "outputs": {"model_fp32.onnx": [[0.25] * 4]}}}, "2 rows"),
    (lambda d: {**d, "reference": {"generator": "g", "seed": 1, "count": 1, "outputs": {"x.onnx": [[0.25] * 4]}}},
     "does not list"),
    (lambda d: {**d, "reference": {"generator": "g", "seed": -1, "count": 1, "outputs": {}}}, "seed"),
    (lambda d: {**d, "outputs": {"heatmap": {"index": 1}},  # an integer past float's range: no OverflowError
                "reference": {"generator": "g", "seed": 1, "count": 1, "outputs": {"model_fp32.onnx": [[0.25] * 4]},
                              "roles": {"model_fp32.onnx": {"heatmap": {"shape": [1], "values": [10 ** 400]}}}}},
     "finite numbers"),
])
def test_new_schema_checks(change, needle):
    with pytest.raises(ModelError) as err:
        BundleMetadata.from_dict(change(_metadata().to_dict()))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_reference_round_trips(tmp_path):
    from tumor_edge.contracts.bundle import ReferenceSet

    meta = _metadata()
    meta.reference = ReferenceSet("tumor-edge-blobs-v1", 7, 1, {"model_fp32.onnx": [[0.1, 0.2, 0.3, 0.4]]},
                                  {"isa": "avx2"})
    meta.write(tmp_path)
    assert BundleMetadata.read(tmp_path).reference == meta.reference


def test_model_entries_list_their_external_data_files(tmp_path):
    """Issue 22: a model's external data is listed with a sha256 per file; entries without any read and write
    exactly as before, so older bundles and older readers are unaffected."""
    from tumor_edge.contracts.bundle import MemberFile

    meta = _metadata()
    plain = meta.to_dict()["models"]["model_fp32.onnx"]
    assert "files" not in plain
    entry = meta.models["model_fp32.onnx"]
    entry.files = {"weights.data": MemberFile("weights.data", 5, "b" * 64)}
    meta.write(tmp_path)
    back = BundleMetadata.read(tmp_path).models["model_fp32.onnx"]
    assert back.files == entry.files and back.extra == {}


@pytest.mark.parametrize(("files", "needle"), [
    ([], "must be an object"),
    ({"../w.data": {"size_bytes": 1, "sha256": "b" * 64}}, "plain file name"),
    ({"sub/w.data": {"size_bytes": 1, "sha256": "b" * 64}}, "plain file name"),
    ({"metadata.json": {"size_bytes": 1, "sha256": "b" * 64}}, "not a data file"),
    ({"model_fp32.onnx": {"size_bytes": 1, "sha256": "b" * 64}}, "not a data file"),
    ({"w.data": {"size_bytes": 1}}, "w.data.sha256"),
    ({"w.data": {"size_bytes": -1, "sha256": "b" * 64}}, "w.data.size_bytes"),
    ({"w.data": "b" * 64}, "w.data.size_bytes"),
])
def test_bad_data_file_lists_are_one_line(files, needle):
    data = _metadata().to_dict()
    data["models"]["model_fp32.onnx"]["files"] = files
    with pytest.raises(ModelError) as caught:
        BundleMetadata.from_dict(data)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", [
    '{"classes": ["a"], "classes": ["b"]}',
    '{"preprocessing": {"height": 32, "height": 64}}',
])
def test_duplicate_json_keys_are_refused(tmp_path, text):
    (tmp_path / "metadata.json").write_text(text)
    with pytest.raises(ModelError, match="duplicate key"):
        BundleMetadata.read(tmp_path)
