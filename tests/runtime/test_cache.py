"""The device cache: optimised models and records, made only from checked bytes, in a folder private to this user,
each with a keyed MAC; a damaged, edited, planted or foreign entry is never used, only rebuilt."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.runtime.models import quadrant_image
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.runtime import cache as device_cache
from tumor_edge.runtime.backends.optimized import RECORD_FILE, WEIGHTS_FILE
from tumor_edge.runtime.cache import CACHE_DIR_ENV, NO_CACHE_ENV, entry_folder, read_record, remove_entry, write_record

MODEL = "model_fp32.onnx"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    return root


def _pixels() -> np.ndarray:
    return np.stack([quadrant_image(q, 32) for q in range(4)])


def _entry(bundle):
    return entry_folder(BundleMetadata.read(bundle).models[MODEL].identity())


def _plain(bundle) -> np.ndarray:
    return Classifier.from_bundle(bundle, options=BackendOptions(use_optimized=False)).infer(_pixels())


def test_second_load_is_a_cache_hit_with_the_same_outputs(fresh_bundle, cache):
    first = Classifier.from_bundle(fresh_bundle)
    entry = _entry(fresh_bundle)
    assert first.backend.source_kind == "cache-built" and (entry / RECORD_FILE).is_file()
    assert entry.is_relative_to(cache) and (entry / WEIGHTS_FILE).is_file()
    second = Classifier.from_bundle(fresh_bundle)
    assert second.backend.source_kind == "cache-hit"
    assert np.allclose(second.infer(_pixels()), _plain(fresh_bundle), atol=1e-6)
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # installed whole, nothing left over


@pytest.mark.parametrize("damage", ["flipped weight", "flipped graph byte", "truncated", "weights missing",
                                    "record edited", "record removed"])
def test_a_damaged_or_edited_entry_is_rebuilt_never_run(fresh_bundle, cache, damage):
    Classifier.from_bundle(fresh_bundle)
    entry = _entry(fresh_bundle)
    weights, graph, record = entry / WEIGHTS_FILE, entry / "model.onnx", entry / RECORD_FILE
    if damage == "flipped weight":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x40
        weights.write_bytes(bytes(data))
    elif damage == "flipped graph byte":
        data = bytearray(graph.read_bytes())
        data[len(data) // 3] ^= 0x01
        graph.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "weights missing":
        weights.unlink()
    elif damage == "record edited":
        data = json.loads(record.read_text())
        data["target"]["isa"] = "other"
        record.write_text(json.dumps(data))
    else:
        record.unlink()
    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.backend.source_kind == "cache-built"
    assert np.allclose(clf.infer(_pixels()), _plain(fresh_bundle), atol=1e-6)
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "cache-hit"


def test_an_entry_with_recomputed_plain_hashes_is_not_trusted(fresh_bundle, cache):
    """Whoever can write the folder can change an entry's bytes and recompute every plain hash in its record;
    without this user's secret the MAC cannot follow, so the entry is rebuilt from the checked model."""
    import hashlib

    Classifier.from_bundle(fresh_bundle)
    entry = _entry(fresh_bundle)
    weights = entry / WEIGHTS_FILE
    values = np.frombuffer(weights.read_bytes(), np.float32).copy()
    values += 1.0  # other weights
    weights.write_bytes(values.tobytes())
    data = json.loads((entry / RECORD_FILE).read_text())
    data["files"][WEIGHTS_FILE] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (entry / RECORD_FILE).write_text(json.dumps(data))
    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.backend.source_kind == "cache-built"
    assert np.allclose(clf.infer(_pixels()), _plain(fresh_bundle), atol=1e-6)


def test_an_entry_from_another_users_cache_is_not_trusted(fresh_bundle, cache, tmp_path, monkeypatch):
    """Same entry, another secret (copied from another user's or machine's cache): its MAC does not verify."""
    import shutil

    other = tmp_path / "other-cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(other))
    Classifier.from_bundle(fresh_bundle)
    copied = _entry(fresh_bundle)
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    device_cache.folder_for(None, device_cache.target_folder_name())
    shutil.copytree(copied, _entry(fresh_bundle))
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "cache-built"


def test_a_cache_folder_others_can_write_is_not_used(fresh_bundle, tmp_path, monkeypatch, caplog):
    """A folder shared through TUMOR_EDGE_CACHE_DIR with mode 1777: another user could plant an entry there for
    the signed model's identity. Refused: nothing is read from it or written to it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setenv(CACHE_DIR_ENV, str(shared))
    caplog.set_level("INFO", logger="tumor_edge.runtime")
    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.backend.source_kind == "plain" and list(shared.iterdir()) == []
    assert "writable by others" in caplog.text


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_cache_folder_of_another_user_is_not_used(fresh_bundle, tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    monkeypatch.setenv(CACHE_DIR_ENV, str(theirs))
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "plain"
    assert list(theirs.iterdir()) == []


def test_the_secret_is_private_and_made_once(cache):
    key = device_cache.secret()
    path = cache / device_cache.SECRET_FILE
    assert len(key) == device_cache.SECRET_BYTES and device_cache.secret() == key
    assert path.stat().st_mode & 0o777 == 0o600 and cache.stat().st_mode & 0o777 == 0o700
    os.chmod(path, 0o644)
    with pytest.raises(device_cache.CacheRefused, match="not private"):
        device_cache.secret()


def test_a_macd_record_reads_back_and_an_edited_one_does_not(cache, tmp_path, monkeypatch):
    folder = device_cache.folder_for(None, "records")
    path = folder / "r.json"
    write_record(path, {"file": "model_int8.onnx", "p50": [1.5, 2.0]})
    assert read_record(path) == {"file": "model_int8.onnx", "p50": [1.5, 2.0]}
    data = json.loads(path.read_text())
    data["file"] = "model_fp32.onnx"
    path.write_text(json.dumps(data))
    assert read_record(path) is None
    write_record(path, {"file": "model_int8.onnx"})
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))  # another secret
    assert read_record(path) is None


def test_remove_entry_drops_it_and_the_next_load_rebuilds(fresh_bundle, cache):
    Classifier.from_bundle(fresh_bundle)
    identity = BundleMetadata.read(fresh_bundle).models[MODEL].identity()
    assert remove_entry(identity) and not entry_folder(identity).exists()
    assert not remove_entry(identity)
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "cache-built"


def test_a_cache_inside_the_bundle_is_not_used(fresh_bundle, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(fresh_bundle / "cache"))
    before = sorted(p.name for p in fresh_bundle.iterdir())
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "plain"
    assert sorted(p.name for p in fresh_bundle.iterdir()) == before


def test_the_cache_can_be_turned_off(fresh_bundle, cache, monkeypatch):
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    assert Classifier.from_bundle(fresh_bundle).backend.source_kind == "plain"
    assert not cache.exists()
