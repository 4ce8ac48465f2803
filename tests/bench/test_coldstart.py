"""Cold start: a fresh process per format, first result and that process's own peak memory."""

from __future__ import annotations

from tests.bench.test_harness import bundle_formats


def test_cold_start_per_format_with_peak_memory(record, exported_bundle):
    cold = {c["format"]: c for c in record["cold_start"]}
    assert set(cold) == bundle_formats(exported_bundle) | {"keras"}
    for c in cold.values():
        assert 0 < c["min_s"] <= c["median_s"] < 120
        assert c["child"]["load_s"] >= 0 and c["child"]["first_inference_s"] > 0
        assert 0 < c["cpu_s"] < 600  # the child's own CPU time, what a loaded machine inflates least
    # The probe's own peak, not the harness's: onnxruntime needs tens of MB, TensorFlow several hundred.
    assert 20 < cold["onnx-fp32"]["peak_rss_mb"] < cold["keras"]["peak_rss_mb"]
