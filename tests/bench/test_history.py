"""The recorded history: file names, order, and the README with each run's ratio to the previous one."""

from __future__ import annotations

import copy
import json

from tumor_edge.bench.history import load_history, render_readme, result_name, unique_path


def test_history_readme_lists_runs_oldest_first_with_ratio_to_previous(record, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    first = copy.deepcopy(record)
    first["created"], first["suite"] = "2026-01-01T00:00:00+00:00", {"commit": "a" * 40, "total_s": 500.0}
    second = copy.deepcopy(record)
    second["created"], second["suite"] = "2026-01-02T00:00:00+00:00", {"commit": "b" * 40, "dirty": True}
    for row in second["results"]:
        row["p50_ms"] *= 2  # the later run is twice as slow
    for rec in (second, first):  # written out of order: the history sorts by creation time
        path = unique_path(results, result_name(rec))
        path.write_text(json.dumps(rec))
    assert result_name(first) == "2026-01-01-aaaaaaaaaa"
    assert unique_path(results, result_name(first)).name == "2026-01-01-aaaaaaaaaa-2.json"
    history = load_history(results)
    assert [p.name for p, _ in history] == ["2026-01-01-aaaaaaaaaa.json", "2026-01-02-bbbbbbbbbb.json"]
    text = render_readme(history, "# Benchmarks", "results/latest.png")
    rows = [line for line in text.splitlines() if line.startswith("| 2026-01-0")]
    assert len(rows) == 2 and "aaaaaaaaaa |" in rows[0] and "bbbbbbbbbb+ |" in rows[1]
    assert rows[0].count(" - |") >= 1 and "| 2.00x |" in rows[1]  # no previous run; then twice as slow
    assert "## Latest: 2026-01-02" in text and "![latency" in text and "## History" in text


def test_history_shows_each_format_against_its_own_ceiling(record, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    old = copy.deepcopy(record)  # from before the int8 ceiling: int8 rows were set against the float32 one
    old["created"], old["suite"] = "2026-01-01T00:00:00+00:00", {"commit": "c" * 40}
    for row in old["results"]:
        row.pop("ceiling_precision")
    new = copy.deepcopy(record)
    new["created"], new["suite"] = "2026-01-02T00:00:00+00:00", {"commit": "d" * 40}
    for rec in (old, new):
        unique_path(results, result_name(rec)).write_text(json.dumps(rec))
    lines = render_readme(load_history(results), "# Benchmarks").splitlines()
    header = next(line for line in lines if line.startswith("| date |")).strip("| ").split(" | ")
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| 2026-01-0")]
    threads = max(record["settings"]["threads"])
    by = {(r["format"], r["threads"], r["batch"]): r for r in record["results"]}
    for column, fmt in (("ONNX int8 of int8 ceiling", "onnx-int8"), ("ONNX fp32 of fp32 ceiling", "onnx-fp32")):
        i = header.index(column)
        assert rows[0][i] == "-"  # not comparable: left out
        assert rows[1][i] == f"{100 * by[(fmt, threads, 1)]['ceiling_fraction']:.0f}%"
    i = header.index("ONNX int8 / LiteRT int8")
    ratio = by[("onnx-int8", threads, 1)]["p50_ms"] / by[("tflite-int8", threads, 1)]["p50_ms"]
    assert rows[1][i] == f"{ratio:.2f}x"
