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
