"""Saved benchmark records: comparison with a baseline record (each figure's ratio to it; all figures are
lower-is-better, so a ratio above 1 + tolerance is a regression, and only figures in both records are compared),
and the recorded history under benchmarks/ (one record per suite run, and the README that shows the latest
figures and how they moved run after run)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumor_edge.bench.report import _md_table, _ms, _pct, _ratio, render_markdown
from tumor_edge.errors import ConfigError, TumorEdgeError

Record = dict[str, Any]

LATENCY_METRICS = ("p50_ms", "p90_ms")
COLD_METRICS = ("median_s", "peak_rss_mb")


class RegressionError(TumorEdgeError):
    """Figures slower than the baseline beyond the tolerance (with --fail-on-regression)."""

    exit_code = 4


@dataclass(frozen=True)
class Comparison:
    figure: str  # "onnx-fp32 threads=2 batch=1" or "cold start onnx-fp32"
    metric: str
    baseline: float
    current: float
    ratio: float
    regressed: bool


def _is_record(data: Any) -> bool:
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("tumor-edge-bench/")


def load_record(path: Path) -> Record:
    """A saved `tumor-edge bench --json` record; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise TumorEdgeError("baseline file not found", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TumorEdgeError(f"unreadable baseline ({err})", path) from err
    if not _is_record(data) or not isinstance(data.get("results"), list):
        raise TumorEdgeError("not a tumor-edge bench record (written by `tumor-edge bench --json`)", path)
    return data


def _pairs(record: Record) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for row in record.get("results", []):
        figure = f"{row['format']} threads={row['threads']} batch={row['batch']}"
        for metric in LATENCY_METRICS:
            if row.get(metric) is not None:
                out[(figure, metric)] = float(row[metric])
    for cold in record.get("cold_start", []):
        for metric in COLD_METRICS:
            if cold.get(metric) is not None:
                out[(f"cold start {cold['format']}", metric)] = float(cold[metric])
    return out


def compare_records(current: Record, baseline: Record, tolerance: float = 0.10) -> list[Comparison]:
    """Every figure present in both records, with its ratio current/baseline."""
    if tolerance < 0:
        raise ConfigError(f"tolerance must be 0 or more, got {tolerance}")
    now, base = _pairs(current), _pairs(baseline)
    ratios = {key: value / base[key] for key, value in now.items() if base.get(key, 0.0) > 0}
    return [Comparison(*key, base[key], now[key], ratio, ratio > 1.0 + tolerance) for key, ratio in ratios.items()]


def render_comparison(comparisons: list[Comparison], baseline: Path, tolerance: float) -> str:
    if not comparisons:
        return f"baseline {baseline}: no figures in common"
    width = max(len(c.figure) for c in comparisons)
    lines = [f"compared with {baseline} (regression: ratio above {1 + tolerance:.2f}x)",
             f"{'figure':<{width}}  {'metric':<11}  {'baseline':>9}  {'now':>9}  {'ratio':>7}"]
    for c in comparisons:
        flag = "  REGRESSION" if c.regressed else ""
        lines.append(f"{c.figure:<{width}}  {c.metric:<11}  {c.baseline:>9.2f}  {c.current:>9.2f}  "
                     f"{c.ratio:>6.2f}x{flag}")
    worse = sum(c.regressed for c in comparisons)
    lines.append(f"{worse} regression(s) among {len(comparisons)} figures")
    return "\n".join(lines)


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


def unique_path(folder: Path, stem: str) -> Path:
    """folder/stem.json, or stem-2.json, -3 ... when a run of the same commit and day is already recorded."""
    path = folder / f"{stem}.json"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.json"
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
        if _is_record(data):
            out.append((path, data))
    return sorted(out, key=lambda item: (item[1].get("created", ""), item[0].name))


def _at_batch_1(record: Record | None, threads: int) -> dict[str, dict[str, Any]]:
    """The record's batch-1 rows at `threads`, by format."""
    return {r["format"]: r for r in (record or {}).get("results", []) if r["threads"] == threads and r["batch"] == 1}


def _fraction(row: dict[str, Any] | None) -> str:
    """The row's fraction of its own ceiling, where the record says which ceiling that is (else not comparable)."""
    if not row or row.get("ceiling_fraction") is None or "ceiling_precision" not in row:
        return "-"
    return _pct(row["ceiling_fraction"])


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def history_table(history: list[tuple[Path, Record]]) -> str:
    headers = ["date", "commit", "CPU", "threads", "load 1/5 min", *(f"{t} p50 ms" for t, _ in HEADLINE),
               "fp32 / Keras", "fp32 / LiteRT fp32", "int8 / fp32", "ONNX int8 / LiteRT int8",
               "ONNX fp32 of fp32 ceiling", "ONNX int8 of int8 ceiling", "ONNX fp32 vs previous", "suite s",
               "record"]
    table: list[list[str]] = []
    previous: Record | None = None
    for path, rec in history:
        threads = max(rec.get("settings", {}).get("threads", [1]))
        rows = _at_batch_1(rec, threads)
        p50 = {fmt: rows[fmt]["p50_ms"] if fmt in rows else None for _, fmt in HEADLINE}
        prev_fp32 = _at_batch_1(previous, threads).get("onnx-fp32", {}).get("p50_ms")
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
            _fraction(rows.get("onnx-fp32")),
            _fraction(rows.get("onnx-int8")),
            _ratio(_div(p50["onnx-fp32"], prev_fp32)),
            f"{rec.get('suite', {}).get('total_s', rec.get('duration_s', 0)):.0f}",
            f"[{path.name}](results/{path.name})",
        ]
        table.append(cells)
        previous = rec
    return _md_table(headers, table)


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
