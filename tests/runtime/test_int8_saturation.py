"""An 8-bit int8 file made where u8 x s8 products accumulate in 32 bits (VNNI, AMX, ARM dot products) runs on a
device whose kernel adds two products into a saturating int16 first (x86 AVX2 without VNNI: `vpmaddubsw`). The
device's outputs here are derived from that arithmetic in numpy, not from the CPU the suite runs on, so every
assertion holds on every CPU: its reproduce check fails on the bundle's reference images, and the device's choice
never runs the file again; 7-bit weights keep every pair sum inside int16 and reproduce there.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.runtime.models import add_file, integer_quadrant_model, make_bundle
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.runtime.backends import BackendOptions

INT16_MAX, INT16_MIN = 32767, -32768


def exact_sums(pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """u8 x s8 dot products summed in int32: what VNNI (`vpdpbusd`), AMX and ARM's dot products compute."""
    flat = pixels.reshape(len(pixels), -1).astype(np.int64)
    return flat @ weights.astype(np.int64)


def pair_saturating_sums(pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AVX2's `vpmaddubsw`: each two neighbouring u8 x s8 products added and saturated to int16, then the int16
    values summed exactly in int32 (`vpmaddwd` with ones, `vpaddd`)."""
    flat = pixels.reshape(len(pixels), -1).astype(np.int64)
    products = flat[:, :, None] * weights.astype(np.int64)[None]  # (images, K, classes)
    pairs = products[:, 0::2] + products[:, 1::2]
    return np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1)


def probabilities(sums: np.ndarray, scale: float) -> np.ndarray:
    logits = sums.astype(np.float64) * scale
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TUMOR_EDGE_NO_MEASURE", raising=False)


def _int8_bundle(tmp_path, bits: int):
    """A recorded bundle: the fp32 quadrant model (recorded by running it) and its integer twin, whose recorded
    outputs are the exact integer arithmetic, as an export machine with 32-bit accumulation computed them."""
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime.choice import reference_images

    bundle = make_bundle(tmp_path / f"b{bits}")
    model, weights, scale = integer_quadrant_model(BundleMetadata.read(bundle), bits)
    add_file(bundle, model)
    record_reference(bundle)
    meta = BundleMetadata.read(bundle)
    images = reference_images(meta.reference, meta)
    meta.reference.outputs["model_int8.onnx"] = probabilities(exact_sums(images, weights), scale).tolist()
    meta.write(bundle)
    return bundle, BundleMetadata.read(bundle), images, weights, scale


def test_an_8bit_file_that_saturates_on_the_device_fails_reproduce_and_is_never_chosen(tmp_path, cache):
    from tumor_edge.runtime.choice import candidates, pick_model, record_checks, reproduce, soundness
    from tumor_edge.runtime.classifier import Classifier

    bundle, meta, images, weights, scale = _int8_bundle(tmp_path, bits=8)
    assert soundness("model_int8.onnx", meta).ok  # the file is sound: made where it computes exactly
    exact, device = exact_sums(images, weights), pair_saturating_sums(images, weights)
    # The reference images drive the pixels over the top of their range: 8-bit pairs saturate there.
    assert np.mean(exact != device) > 0.5 and images.max() == 255
    on_the_device = reproduce("model_int8.onnx", probabilities(device, scale), meta)
    assert not on_the_device.ok and on_the_device.figures["max_abs_diff"] > on_the_device.figures["limit"]
    assert reproduce("model_int8.onnx", probabilities(exact, scale), meta).ok  # a VNNI or ARM device

    options = BackendOptions(threads=1)
    record_checks(meta, {"model_int8.onnx": on_the_device}, options)
    ok, skipped = candidates(bundle, meta, options)
    assert ok == ["model_fp32.onnx"] and "does not reproduce" in skipped["model_int8.onnx"]
    opener = functools.partial(Classifier.from_bundle, bundle, options=options)
    assert meta.default_model() == "model_int8.onnx"  # the format table prefers int8...
    assert pick_model(bundle, meta, opener, options) == "model_fp32.onnx"  # ...the device never runs it again


def test_7bit_weights_keep_every_pair_sum_inside_int16(tmp_path):
    from tumor_edge.runtime.choice import reproduce

    _, meta, images, weights, scale = _int8_bundle(tmp_path, bits=7)
    assert np.abs(weights).max() == 63 and INT16_MAX >= 2 * 255 * 63
    assert np.array_equal(pair_saturating_sums(images, weights), exact_sums(images, weights))
    assert reproduce("model_int8.onnx", probabilities(pair_saturating_sums(images, weights), scale), meta).ok
