"""The record for people: screen text, Markdown (with both ceilings and the int8 engine table) and the chart."""

from __future__ import annotations

import copy


def test_reports_render(record, tmp_path):
    from tumor_edge.bench.report import render_chart, render_markdown, render_text

    text = render_text(record)
    assert "onnx-int8" in text and "cold start" in text and "vs Keras" in text
    md = render_markdown(record, "chart.png")
    assert md.count("| keras |") == 4 + 1 and "![latency" in md  # 2 threads x 2 batches, and its cold start
    png = render_chart(record, tmp_path / "chart.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reports_show_each_ceiling_and_each_fraction_of_it(record):
    from tumor_edge.bench.report import render_markdown, render_text

    text, md = render_text(record), render_markdown(record)
    for out in (text, md):
        assert "fp32 matmul ceiling (onnxruntime MatMul float32" in out
        assert "int8 matmul ceiling (onnxruntime MatMulInteger" in out
        assert ("ISA theoretical peak (" in out) == bool(record.get("isa_peak"))
        assert "int8 engines" in out and "of its ceiling" in out
    int8_rows = [line for line in md.splitlines() if line.startswith("| onnx-int8 |")]
    fp32_rows = [line for line in md.splitlines() if line.startswith("| onnx-fp32 |")]
    assert len(int8_rows) == 4 + 1 and len(fp32_rows) == 4 + 1  # 4 latency rows each, and a cold start row
    assert all("% int8 |" in line for line in int8_rows[:4]) and all("% fp32 |" in line for line in fp32_rows[:4])
    assert md.count("| 1 | 1 |") >= 1 and "onnxruntime / LiteRT" in md


def test_older_records_still_render(record, tmp_path):
    """A record from before the int8 ceiling (history keeps them): its ceiling is the float32 one."""
    from tumor_edge.bench.report import render_chart, render_markdown

    old = copy.deepcopy(record)
    old["ceiling"] = [{k: v for k, v in c.items() if k not in ("precision", "engine")}
                      for c in old["ceiling"] if c["precision"] == "fp32"]
    old["ceiling_passes"] = [c for c in old["ceiling"]]
    for key in ("int8_engines", "ceiling_unavailable"):
        old.pop(key)
    for row in old["results"]:
        row.pop("ceiling_precision")
    for goal in old["goals"]:
        goal["reachable_in_fp32"] = goal.pop("reachable")
        goal.pop("ceiling_precision")
    md = render_markdown(old)
    assert "fp32 matmul ceiling" in md and "int8 engines" not in md
    assert render_chart(old, tmp_path / "old.png") is not None
