"""The device's folder of records: private to this user (refused when another user owns it or others can write
it), each record with a keyed MAC under a per-user secret (0600), so an edited, copied or planted record is never
used."""

from __future__ import annotations

import json
import os

import pytest

from tumor_edge.runtime import choice as device_cache
from tumor_edge.runtime.choice import CACHE_DIR_ENV, CacheRefused, folder_for, read_record, write_record


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    return root


def test_a_macd_record_reads_back_and_an_edited_one_does_not(cache):
    path = folder_for(None, "records") / "r.json"
    write_record(path, {"file": "model_int8.onnx", "p50": [1.5, 2.0]})
    assert read_record(path) == {"file": "model_int8.onnx", "p50": [1.5, 2.0]}
    data = json.loads(path.read_text())
    data["file"] = "model_fp32.onnx"
    path.write_text(json.dumps(data))
    assert read_record(path) is None
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # written atomically


def test_a_record_with_a_recomputed_plain_hash_is_not_trusted(cache):
    """Finding (medium/low): the device-choice record's "own sha256" had no key, so editing it and recomputing the
    hash switched the file that runs. Without this user's secret the MAC cannot follow."""
    import hashlib

    path = folder_for(None, "records") / "r.json"
    write_record(path, {"file": "model_int8.onnx"})
    body = {"file": "model_fp32.onnx"}
    forged = {**body, device_cache.MAC_FIELD: hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}
    path.write_text(json.dumps(forged))
    assert read_record(path) is None


def test_a_record_from_another_users_folder_is_not_trusted(cache, tmp_path, monkeypatch):
    path = folder_for(None, "records") / "r.json"
    write_record(path, {"file": "model_int8.onnx"})
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))  # another secret
    assert read_record(path) is None


def test_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """Finding (medium/low): a cache folder shared through TUMOR_EDGE_CACHE_DIR (mode 1777) took entries another
    user planted."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setenv(CACHE_DIR_ENV, str(shared))
    with pytest.raises(CacheRefused, match="writable by others"):
        write_record(shared / "r.json", {"file": "x"})
    assert list(shared.iterdir()) == [] and read_record(shared / "r.json") is None


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    monkeypatch.setenv(CACHE_DIR_ENV, str(theirs))
    with pytest.raises(CacheRefused, match="another user"):
        folder_for(None)


def test_a_linked_folder_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "link"))
    with pytest.raises(CacheRefused, match="not a folder"):
        folder_for(None)


def test_the_secret_is_private_and_made_once(cache):
    key = device_cache.secret()
    path = cache / device_cache.SECRET_FILE
    assert len(key) == device_cache.SECRET_BYTES and device_cache.secret() == key
    assert path.stat().st_mode & 0o777 == 0o600 and cache.stat().st_mode & 0o777 == 0o700
    os.chmod(path, 0o644)
    with pytest.raises(CacheRefused, match="not private"):
        device_cache.secret()
