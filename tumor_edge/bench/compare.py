"""Comparison with a saved benchmark record: each figure's ratio to the baseline; all figures are lower-is-better,
so a ratio above 1 + tolerance is a regression. Only figures in both records are compared."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def load_record(path: Path) -> Record:
    """A saved `tumor-edge bench --json` record; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise TumorEdgeError("baseline file not found", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TumorEdgeError(f"unreadable baseline ({err})", path) from err
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("tumor-edge-bench/") \
            or not isinstance(data.get("results"), list):
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
    out = []
    for key, value in now.items():
        if key not in base or base[key] <= 0:
            continue
        ratio = value / base[key]
        out.append(Comparison(key[0], key[1], base[key], value, ratio, ratio > 1.0 + tolerance))
    return out


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
