"""The device cache of optimised models: built at first use, a hit from the second load on, never wrong.

Bundles carry models only; each device keeps onnxruntime's optimised graph per model sha256 and machine target.
Every cache problem costs only the speed-up: the plain model runs and the entry is rebuilt.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from tests.runtime.models import make_bundle, quadrant_image, quadrant_model
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.runtime.backends import OPTIMIZED_META_KEY, append_metadata_prop, read_optimized_record
from tumor_edge.runtime.cache import CACHE_DIR_ENV, NO_CACHE_ENV, cache_root, entry_path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    return root


def _pixels() -> np.ndarray:
    return np.stack([quadrant_image(q, 32) for q in range(4)])


def _sha(bundle) -> str:
    return BundleMetadata.read(bundle).models["model_fp32.onnx"].sha256


def test_second_load_is_a_cache_hit(fresh_bundle, cache):
    first = Classifier.from_bundle(fresh_bundle)
    entry = entry_path(_sha(fresh_bundle))
    assert first.backend.source_kind == "cache-built" and entry.is_file()
    assert entry.is_relative_to(cache)
    assert read_optimized_record(entry)["source_sha256"] == _sha(fresh_bundle)
    second = Classifier.from_bundle(fresh_bundle)
    assert second.backend.source_kind == "cache-hit" and second.model_path == entry
    plain = Classifier.from_bundle(fresh_bundle, options=BackendOptions(use_optimized=False))
    assert plain.model_path == fresh_bundle / "model_fp32.onnx"
    assert np.allclose(second.infer(_pixels()), plain.infer(_pixels()), atol=1e-6)
    assert not [p for p in entry.parent.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically


@pytest.mark.parametrize("damage", ["garbage", "flipped weight", "flipped graph byte", "truncated", "empty",
                                    "weights missing"])
def test_corrupted_entry_is_ignored_and_rebuilt(fresh_bundle, cache, damage):
    Classifier.from_bundle(fresh_bundle)
    entry = entry_path(_sha(fresh_bundle))
    weights = entry.parent / "weights.bin"
    assert weights.is_file() and entry.stat().st_size < weights.stat().st_size  # initializers live beside it
    target = weights if damage in ("flipped weight", "weights missing") else entry
    data = bytearray(target.read_bytes())
    if damage == "garbage":
        data = bytearray(b"\x08\x07junk" * 50) + data[-600:]  # the record survives, the model does not
    elif damage == "flipped weight":
        at = data.find(np.float32(0.05 / (16 * 16 * 3)).tobytes())
        assert at >= 0
        data[at + 3] ^= 0x7F  # still a loadable model, with one wrong weight
    elif damage == "flipped graph byte":
        data[len(data) // 3] ^= 0x01
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    if damage == "weights missing":
        weights.unlink()
    else:
        target.write_bytes(bytes(data))
    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.backend.source_kind == "cache-built"
    assert [p.label for p in clf.predict_batch(list(_pixels()))] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "cache-hit"
    assert not [p for p in entry.parent.parent.iterdir() if p.name.endswith(".tmp")]


def test_foreign_or_stale_entry_is_never_loaded(tmp_path, cache):
    """An entry made from another model (a file put under this model's name) or for another machine target."""
    mine, other = make_bundle(tmp_path / "mine"), make_bundle(tmp_path / "other")
    model = onnx.load(str(other / "model_fp32.onnx"))
    next(t for t in model.graph.initializer if t.name == "B").float_data[:] = [0.0, 0.0, 0.0, 100.0]
    onnx.save(model, other / "model_fp32.onnx")
    meta = BundleMetadata.read(other)
    from tumor_edge.contracts.bundle import describe_file

    meta.models["model_fp32.onnx"] = describe_file(other / "model_fp32.onnx", "onnx", "fp32")
    meta.write(other)
    Classifier.from_bundle(other)
    entry = entry_path(_sha(mine))
    import shutil

    shutil.copytree(entry_path(_sha(other)).parent, entry.parent)  # the other model's entry, under my sha256
    clf = Classifier.from_bundle(mine)
    assert clf.backend.source_kind == "cache-built"
    assert clf.predict(_pixels()[0]).label == "glioma"

    record = read_optimized_record(entry)
    append_metadata_prop(entry, OPTIMIZED_META_KEY, json.dumps(dict(record, target={"machine": "aarch64"})))
    assert Classifier.from_bundle(mine).backend.source_kind == "cache-built"


def test_read_only_bundle_works_and_is_not_written(tmp_path, cache):
    bundle = make_bundle(tmp_path / "ro")
    before = sorted(p.name for p in bundle.iterdir())
    for path in [*bundle.iterdir(), bundle]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        assert Classifier.from_bundle(bundle).predict(_pixels()[3]).label == "pituitary"
        assert Classifier.from_bundle(bundle).backend.source_kind == "cache-hit"
        assert sorted(p.name for p in bundle.iterdir()) == before
    finally:
        bundle.chmod(0o755)


def test_unusable_cache_folder_falls_back_to_the_plain_model(bundle, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    with caplog.at_level("INFO", logger="tumor_edge.runtime"):
        clf = Classifier.from_bundle(bundle)
    assert clf.backend.source_kind == "plain" and clf.model_path == bundle / "model_fp32.onnx"
    assert clf.predict(_pixels()[1]).label == "meningioma"
    assert "not caching" in caplog.text


def test_cache_can_be_turned_off_and_follows_xdg(bundle, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tumor-edge"
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    assert Classifier.from_bundle(bundle).backend.source_kind == "plain"
    assert not (tmp_path / "xdg").exists()
    monkeypatch.delenv(NO_CACHE_ENV)
    assert Classifier.from_bundle(bundle, options=BackendOptions(cache=False)).backend.source_kind == "plain"
    options = BackendOptions(cache_dir=str(tmp_path / "own"))
    assert Classifier.from_bundle(bundle, options=options).backend.source_kind == "cache-built"
    entry = entry_path(_sha(bundle), options)
    assert entry.is_relative_to(tmp_path / "own") and entry.is_file()
    assert oct(os.stat(entry.parent).st_mode & 0o777) == "0o700"  # private to this user


def test_lone_onnx_file_is_cached_by_its_own_hash(tmp_path, cache):
    from tests.runtime.models import quadrant_metadata

    lone = tmp_path / "lone.onnx"
    onnx.save(quadrant_model(metadata=quadrant_metadata()), lone)
    assert Classifier.from_bundle(lone).backend.source_kind == "cache-built"
    assert Classifier.from_bundle(lone).backend.source_kind == "cache-hit"
