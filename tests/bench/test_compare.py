"""Comparison with a saved record: only the planted regression is flagged; bad baselines are one-line errors."""

from __future__ import annotations

import copy

import pytest

from tumor_edge.bench.history import compare_records, load_record
from tumor_edge.errors import ConfigError, TumorEdgeError


def test_compare_flags_only_the_planted_regression(make_row):
    base = {"schema": "tumor-edge-bench/1",
            "results": [make_row("onnx-fp32", 2, 1, 40.0), make_row("onnx-int8", 2, 1, 30.0)],
            "cold_start": [{"format": "onnx-fp32", "median_s": 0.5, "peak_rss_mb": 200.0}]}
    now = copy.deepcopy(base)
    now["results"][1]["p50_ms"] = 30.0 * 1.25  # planted: int8 p50 25 % slower
    now["results"][0]["p50_ms"] = 40.0 * 1.05  # within tolerance
    comparisons = {(c.figure, c.metric): c for c in compare_records(now, base, tolerance=0.10)}
    assert comparisons[("onnx-int8 threads=2 batch=1", "p50_ms")].regressed
    assert comparisons[("onnx-int8 threads=2 batch=1", "p50_ms")].ratio == pytest.approx(1.25)
    assert not comparisons[("onnx-fp32 threads=2 batch=1", "p50_ms")].regressed
    assert [k for k, c in comparisons.items() if c.regressed] == [("onnx-int8 threads=2 batch=1", "p50_ms")]
    assert comparisons[("cold start onnx-fp32", "peak_rss_mb")].ratio == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        compare_records(now, base, tolerance=-0.1)


def test_load_record_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TumorEdgeError, match="bad.json: unreadable baseline"):
        load_record(bad)
    other = tmp_path / "other.json"
    other.write_text('{"results": []}')
    with pytest.raises(TumorEdgeError, match="other.json: not a tumor-edge bench record"):
        load_record(other)
    with pytest.raises(TumorEdgeError, match="missing.json: baseline file not found"):
        load_record(tmp_path / "missing.json")
