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
