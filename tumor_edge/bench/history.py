"""The recorded history under benchmarks/: one JSON record per suite run, and the README that shows the latest
figures and how they moved run after run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tumor_edge.bench.report import _ms, _pct, _ratio, render_markdown

Record = dict[str, Any]

# The history table's headline formats (column title, format), at batch 1 and the run's largest thread count.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("ONNX fp32", "onnx-fp32"),
    ("ONNX int8", "onnx-int8"),
    ("LiteRT fp32", "tflite-fp32"),
    ("LiteRT int8", "tflite-int8"),
    ("Keras", "keras"),
)


def result_name(record: Record) -> str:
    """<date>-<commit> for the record's file name (commit 'nocommit' outside git)."""
    date = str(record.get("created", ""))[:10] or "undated"
    commit = (record.get("suite", {}).get("commit") or "nocommit")[:10]
    return f"{date}-{commit}"


def unique_path(folder: Path, stem: str, suffix: str = ".json") -> Path:
    """folder/stem.json, or stem-2.json, -3 ... when a run of the same commit and day is already recorded."""
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def load_history(folder: Path) -> list[tuple[Path, Record]]:
    """Every recorded suite run, oldest first (by creation time in the record)."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and str(data.get("schema", "")).startswith("tumor-edge-bench/"):
            out.append((path, data))
    return sorted(out, key=lambda item: (item[1].get("created", ""), item[0].name))


def _row(record: Record, fmt: str, threads: int, batch: int = 1) -> dict[str, Any] | None:
    for row in record.get("results", []):
        if row["format"] == fmt and row["threads"] == threads and row["batch"] == batch:
            return row
    return None


def _p50(record: Record, fmt: str, threads: int, batch: int = 1) -> float | None:
    row = _row(record, fmt, threads, batch)
    return row["p50_ms"] if row else None


def _fraction(record: Record, fmt: str, threads: int) -> str:
    """The row's fraction of its own ceiling, where the record says which ceiling that is (else not comparable)."""
    row = _row(record, fmt, threads)
    if not row or row.get("ceiling_fraction") is None or "ceiling_precision" not in row:
        return "-"
    return _pct(row["ceiling_fraction"])


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def history_table(history: list[tuple[Path, Record]], folder_link: str = "results") -> str:
    headers = ["date", "commit", "CPU", "threads", "load 1/5 min", *(f"{t} p50 ms" for t, _ in HEADLINE),
               "fp32 / Keras", "fp32 / LiteRT fp32", "int8 / fp32", "ONNX int8 / LiteRT int8",
               "ONNX fp32 of fp32 ceiling", "ONNX int8 of int8 ceiling", "ONNX fp32 vs previous", "suite s",
               "record"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    previous: Record | None = None
    for path, rec in history:
        threads = max(rec.get("settings", {}).get("threads", [1]))
        p50 = {fmt: _p50(rec, fmt, threads) for _, fmt in HEADLINE}
        prev_fp32 = _p50(previous, "onnx-fp32", threads) if previous else None
        load = rec.get("machine", {}).get("load_average") or []
        cells = [
            str(rec.get("created", ""))[:16].replace("T", " "),
            str(rec.get("suite", {}).get("commit") or "-")[:10]
            + ("+" if rec.get("suite", {}).get("dirty") else ""),
            _short_cpu(rec.get("machine", {})),
            str(threads),
            "/".join(f"{x:.1f}" for x in load[:2]) or "-",
            *(_ms(p50[fmt]) for _, fmt in HEADLINE),
            _ratio(_div(p50["onnx-fp32"], p50["keras"])),
            _ratio(_div(p50["onnx-fp32"], p50["tflite-fp32"])),
            _ratio(_div(p50["onnx-int8"], p50["onnx-fp32"])),
            _ratio(_div(p50["onnx-int8"], p50["tflite-int8"])),
            _fraction(rec, "onnx-fp32", threads),
            _fraction(rec, "onnx-int8", threads),
            _ratio(_div(p50["onnx-fp32"], prev_fp32)),
            f"{rec.get('suite', {}).get('total_s', rec.get('duration_s', 0)):.0f}",
            f"[{path.name}]({folder_link}/{path.name})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        previous = rec
    return "\n".join(lines)


def _short_cpu(machine: dict[str, Any]) -> str:
    model = re.sub(r"\((R|TM)\)|CPU|Processor|@.*$", "", str(machine.get("cpu_model", "?"))).strip()
    model = re.sub(r"\s+", " ", model)
    int8 = machine.get("int8_acceleration") or []
    vnni = "VNNI" if any("VNNI" in x for x in int8) else ("dot" if any("dot" in x for x in int8) else "no VNNI")
    return f"{model}, {machine.get('usable_cpus')} CPUs, {vnni}"


def render_readme(history: list[tuple[Path, Record]], intro: str, chart: str | None = None) -> str:
    """The benchmarks README: intro, the latest run in full, then the history table (oldest first)."""
    parts = [intro.rstrip(), ""]
    if history:
        path, latest = history[-1]
        parts.append(render_markdown(latest, chart, level=2,
                                     title=f"Latest: {latest.get('created', '')[:10]}, commit "
                                           f"{str(latest.get('suite', {}).get('commit') or '-')[:10]} "
                                           f"([{path.name}](results/{path.name}))"))
        note = latest.get("suite", {}).get("note")
        if note:
            parts += [f"Note: {note}", ""]
        parts += ["## History", "",
                  "Batch 1 at the run's largest thread count; ratios are p50 over p50 in the same run.", "",
                  history_table(history), ""]
    return "\n".join(parts)
