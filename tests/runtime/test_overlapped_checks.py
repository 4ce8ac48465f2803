"""The integrity checks that run beside the model load (cold start, issue 13): they overlap, they never weaken.

The model file's sha256 runs on a second thread while onnxruntime loads this device's cached optimised form, and
a cache entry's CRC32 runs beside its own load; the backend is returned only after both have passed, and the
model file itself is never read by the engine before its check has passed.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.runtime.models import make_bundle, quadrant_image
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.errors import BundleIntegrityError, ModelError
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.runtime.backends import open_backend
from tumor_edge.runtime.backends.optimized import digest_file
from tumor_edge.runtime.backends.options import session_options
from tumor_edge.runtime.background import Background
from tumor_edge.runtime.cache import CACHE_DIR_ENV, NO_CACHE_ENV, entry_path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    return tmp_path / "cache"


def _flip_a_weight(path) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(np.float32(0.05 / (16 * 16 * 3)).tobytes())
    assert at >= 0
    data[at + 3] ^= 0x7F  # same size, another model
    path.write_bytes(bytes(data))


def test_tampered_model_is_refused_even_when_its_cache_entry_is_warm(tmp_path, cache):
    """The cache is keyed by the sha256 the metadata records, so a warm entry exists for a tampered file too;
    the session loaded from it meanwhile must never be handed out."""
    bundle = make_bundle(tmp_path / "b")
    assert Classifier.from_bundle(bundle).backend.source_kind == "cache-built"
    _flip_a_weight(bundle / "model_fp32.onnx")
    with pytest.raises(BundleIntegrityError, match="sha256") as err:
        Classifier.from_bundle(bundle)
    assert str(bundle / "model_fp32.onnx") in str(err.value) and "\n" not in str(err.value)
    assert entry_path(BundleMetadata.read(bundle).models["model_fp32.onnx"].sha256).is_file()  # not the culprit


def test_the_check_comes_before_the_engine_reads_the_model_file(tmp_path, cache):
    """With no optimised form to load meanwhile, a failing check is raised before onnxruntime parses the file:
    an unverified file never reaches the engine's parser."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all" * 10)

    def failing() -> None:
        raise BundleIntegrityError("refused by the check", junk)

    with pytest.raises(BundleIntegrityError, match="refused by the check"):
        open_backend(junk, BackendOptions(), sha256="0" * 64, source_check=failing)
    with pytest.raises(ModelError, match="onnxruntime cannot load"):  # what the engine would have said
        open_backend(junk, BackendOptions(), sha256="0" * 64, source_check=lambda: None)


def test_cache_hit_calls_the_check_once_and_reproduces_the_scores(tmp_path, cache):
    bundle = make_bundle(tmp_path / "b")
    path = bundle / "model_fp32.onnx"
    digest = BundleMetadata.read(bundle).models[path.name].sha256
    pixels = np.stack([quadrant_image(q, 32) for q in range(4)]).astype(np.float32)
    plain = open_backend(path, BackendOptions(use_optimized=False)).run(pixels)[0]
    open_backend(path, BackendOptions(), sha256=digest)  # builds the entry
    calls = []
    hit = open_backend(path, BackendOptions(), sha256=digest, source_check=lambda: calls.append(1))
    assert hit.source_kind == "cache-hit" and calls == [1]
    assert np.allclose(hit.run(pixels)[0], plain, atol=1e-6)


def test_background_hands_back_value_or_exception():
    assert Background(sum, [1, 2, 3]).result() == 6
    with pytest.raises(ZeroDivisionError):
        Background(lambda: 1 / 0).result()


def test_digest_file_matches_hashlib_and_zlib(tmp_path):
    import hashlib
    import zlib

    data = np.random.default_rng(0).bytes(700_001)  # not a multiple of the block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert digest_file(path) == hashlib.sha256(data).hexdigest()
    assert digest_file(path, "crc32") == f"{zlib.crc32(data):08x}"
    assert digest_file(path, "sha256", size=1000) == hashlib.sha256(data[:1000]).hexdigest()


def test_memory_pattern_follows_the_arena():
    """One batch: neither (lower peak); many batches: both (flat memory). A pattern without the arena only grew
    the heap run after run."""
    one = session_options(ort, BackendOptions(), "none")
    assert not one.enable_cpu_mem_arena and not one.enable_mem_pattern
    many = session_options(ort, BackendOptions(memory_arena=True), "none")
    assert many.enable_cpu_mem_arena and many.enable_mem_pattern
