"""A benchmark record rendered for people: the screen table, Markdown and a PNG chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tumor_edge.bench.ceiling import LEGACY_FP32_ENGINE, IsaPeak
from tumor_edge.machine import machine_summary

Record = dict[str, Any]


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    """Milliseconds with the digits that matter at every scale (0.0123, 4.56, 158.3)."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _of_ceiling(fraction: float | None, precision: str | None) -> str:
    """"82% fp32": the fraction and which ceiling (a record without the precision has only the float32 one)."""
    return "-" if fraction is None else f"{_pct(fraction)} {precision or 'fp32'}"


Columns = list[tuple[str, Callable[[dict], str]]]  # (header, cell): one list serves the screen and Markdown

PLACE: Columns = [("threads", lambda r: str(r["threads"])), ("batch", lambda r: str(r["batch"]))]

RESULT_COLUMNS: Columns = [
    ("format", lambda r: r["format"]),
    *PLACE,
    ("runs", lambda r: str(r["runs"])),
    *((f"{stat} ms", lambda r, key=f"{stat}_ms": _ms(r[key])) for stat in ("min", "p50", "p90", "p99", "mean", "std")),
    ("img/s", lambda r: _num(r["images_per_s"])),
    ("vs Keras", lambda r: _ratio(r.get("vs_keras"))),
    ("vs ONNX fp32", lambda r: _ratio(r.get("vs_onnx_fp32"))),
    ("GMAC/s", lambda r: _num(r.get("gmacs"))),
    ("of its ceiling", lambda r: _of_ceiling(r.get("ceiling_fraction"), r.get("ceiling_precision"))
     + (" MEASUREMENT ERROR" if r.get("measurement_error") else "")),
]

INT8_COLUMNS: Columns = [
    *PLACE,
    ("onnxruntime int8 p50 ms", lambda r: _ms(r["left_p50_ms"])),
    ("LiteRT int8 p50 ms", lambda r: _ms(r["right_p50_ms"])),
    ("onnxruntime / LiteRT", lambda r: _ratio(r["ratio"])),
    ("onnxruntime of int8 ceiling", lambda r: _pct(r["left_ceiling_fraction"])),
    ("LiteRT of int8 ceiling", lambda r: _pct(r["right_ceiling_fraction"])),
]

COLD_COLUMNS: Columns = [
    ("format", lambda c: c["format"]),
    ("file", lambda c: c["file"]),
    ("first result s (median)", lambda c: _num(c["median_s"], ".2f")),
    ("min s", lambda c: _num(c["min_s"], ".2f")),
    ("peak RSS MB", lambda c: _num(c["peak_rss_mb"], ".0f")),
    ("CPU s", lambda c: _num(c.get("cpu_s"), ".2f")),
    *((f"{label} s", lambda c, key=key: _num(c.get("child", {}).get(key), ".2f"))
      for label, key in (("import", "import_s"), ("load", "load_s"), ("1st inference", "first_inference_s"))),
]


def _sorted_rows(record: Record) -> list[dict]:
    return sorted(record["results"], key=lambda r: (r["batch"], r["threads"]))


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _goal_line(g: dict) -> str:
    line = (f"{'PASS' if g['passed'] else 'FAIL'}  {g['name']}: {g['ratio']:.2f}x (goal <= {g['limit']:.2f}x; "
            f"{_ms(g['numerator_p50_ms'])} / {_ms(g['denominator_p50_ms'])} ms p50, batch {g['batch']}, "
            f"{g['threads']} threads)")
    need = g.get("required_ceiling_fraction")
    reachable = g.get("reachable", g.get("reachable_in_fp32"))  # a record's older key
    if need is not None and reachable is not None:
        kind = g.get("ceiling_precision", "fp32")
        line += f"; meeting it needs {need:.0%} of the {kind} matmul ceiling"
        if reachable is False:
            line += f": beyond this machine's {kind} arithmetic"
    return line


def _header_lines(record: Record) -> list[str]:
    model = record["model"]
    return [
        f"machine: {machine_summary(record['machine'])}",
        f"model: {model['source']} ({model['input_hw'][0]}x{model['input_hw'][1]}, "
        f"{_num(model.get('gmac_per_image'), '.2f')} GMAC/image); inputs: {model['inputs']}",
        *_ceiling_lines(record),
        f"load average at start {record['machine'].get('load_average')}, at end {record.get('load_average_end')}",
    ]


def _ceiling_lines(record: Record) -> list[str]:
    """One line per ceiling kind: its best GMAC/s per thread count and what measured it."""
    by_kind: dict[str, list[dict]] = {}
    for c in record.get("ceiling", []):
        by_kind.setdefault(c.get("precision", "fp32"), []).append(c)
    passes = len({c["threads"] for c in record.get("ceiling_passes", [])}) or 1
    rounds = len(record.get("ceiling_passes", [])) // max(1, len(by_kind)) // passes
    lines = [f"{kind} matmul ceiling ({cs[0].get('engine', LEGACY_FP32_ENGINE)}, {cs[0]['size']}^3, "
             f"best GMAC/s of {rounds} passes): "
             + ", ".join(f"{c['threads']} thr {c['best_gmacs']:.1f}" for c in cs) for kind, cs in by_kind.items()]
    lines += [f"{kind} ceiling not measured: {why}" for kind, why in record.get("ceiling_unavailable", {}).items()]
    peak = record.get("isa_peak")
    if peak and by_kind:
        lines.append(f"ISA theoretical peak ({peak['fma_units']} x {peak['vector_bits']}-bit FMA units x "
                     f"{peak['clock_ghz']:.2f} GHz, {peak['clock_source']}): "
                     + "; ".join(f"{kind} " + ", ".join(f"{c['threads']} thr {_peak(peak, kind, c['threads']):.1f}"
                                                       for c in cs) for kind, cs in by_kind.items()))
    lines += [f"WARNING: {line}" for line in record.get("ceiling_problems", [])]
    lines += [f"MEASUREMENT ERROR: {r['format']} at {r['threads']} thr, batch {r['batch']}: {r['measurement_error']}"
              for r in record.get("results", []) if r.get("measurement_error")]
    return lines or ["matmul ceilings not measured"]


def _peak(peak: dict, kind: str, threads: int) -> float:
    """The recorded ISA peak (GMAC/s) of `kind` arithmetic at `threads`."""
    return IsaPeak(**{k: peak[k] for k in IsaPeak.__dataclass_fields__ if k in peak}).gmacs(kind, threads)


# (record key, screen title, Markdown heading, Markdown note, columns): the tables after the results.
TABLES = (
    ("cold_start", "cold start (fresh process to first result, one image):", "Cold start", None, COLD_COLUMNS),
    ("int8_engines", "int8 engines (p50 per call; each as a fraction of the int8 matmul ceiling):",
     "int8 engines: onnxruntime against LiteRT", "p50 per call; each engine's achieved GMAC/s as a fraction of "
     "the int8 matmul ceiling at the same threads.", INT8_COLUMNS),
)


def _cells(columns: Columns, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


def render_text(record: Record) -> str:
    """The screen report."""
    parts = [*_header_lines(record), "", _text_table(*_cells(RESULT_COLUMNS, _sorted_rows(record)))]
    for key, title, _, _, columns in TABLES:
        if record.get(key):
            parts += ["", title, _text_table(*_cells(columns, record[key]))]
    if record.get("goals"):
        parts += ["", *(_goal_line(g) for g in record["goals"])]
    parts += [f"skipped {s['format']} ({s['file']}): {s['reason']}" for s in record.get("skipped", [])]
    parts.append(f"took {record['duration_s']:.0f} s")
    return "\n".join(parts)


def render_markdown(record: Record, chart: str | None = None, level: int = 1, title: str | None = None) -> str:
    """The record as Markdown; `level` sets the heading depth so the history README can embed it."""
    h = "#" * level
    parts = [f"{h} {title or 'tumor-edge benchmark, ' + record['created']}", "",
             *(f"- {line}" for line in _header_lines(record)), "",
             "Latency per call (one call = one batch); ratios are p50 over the reference's p50 at the same "
             "threads and batch; GMAC/s at the p50, as a fraction of the matmul ceiling of the file's own "
             "arithmetic (int8 files: onnxruntime's integer matmul; fp32 and fp16 files: the float32 matmul).",
             "", _md_table(*_cells(RESULT_COLUMNS, _sorted_rows(record)))]
    for key, _, heading, note, columns in TABLES:
        if record.get(key):
            parts += ["", f"{h}# {heading}", "", *([note, ""] if note else []),
                      _md_table(*_cells(columns, record[key]))]
    if record.get("goals"):
        parts += ["", f"{h}# Goals", "", *(f"- {_goal_line(g)}" for g in record["goals"])]
    if record.get("skipped"):
        parts += ["", f"{h}# Skipped", "", *(f"- {s['format']} ({s['file']}): {s['reason']}"
                                          for s in record["skipped"])]
    if chart:
        parts += ["", f"![latency by format and threads]({chart})"]
    return "\n".join(parts) + "\n"


def _bars(ax: Any, rows: dict, formats: list[str], threads: list[int], batch: int, value) -> None:
    width = 0.8 / max(1, len(threads))
    for j, t in enumerate(threads):
        got = [(i, v) for i, fmt in enumerate(formats)
               if (fmt, t, batch) in rows and (v := value(rows[fmt, t, batch])) is not None]  # (height, error)
        xs = [i + (j - (len(threads) - 1) / 2) * width for i, _ in got]
        heights, errs = [v[0] for _, v in got], [v[1] for _, v in got]
        ax.bar(xs, heights, width, yerr=[[0] * len(errs), errs] if any(errs) else None, capsize=2,
               label=f"{t} thread(s)")
    ax.set_xticks(range(len(formats)))
    ax.set_xticklabels(formats, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7)


def render_chart(record: Record, path: Path) -> Path | None:
    """Top row: bars of p50 latency per image (whisker to the p90). Bottom row (when MACs and ceilings were
    measured): achieved GMAC/s over the format's own ceiling, with a line at 100 %. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = record["results"]
    batches = sorted({r["batch"] for r in results})
    threads = sorted({r["threads"] for r in results})
    formats = list(dict.fromkeys(r["format"] for r in results))
    rows = {(r["format"], r["threads"], r["batch"]): r for r in results}
    fractions = any(r.get("ceiling_fraction") is not None for r in results)
    panels = 2 if fractions else 1
    fig, axes = plt.subplots(panels, len(batches), figsize=(5.5 * len(batches), 4.2 * panels), squeeze=False)
    for col, batch in enumerate(batches):
        ax = axes[0][col]
        _bars(ax, rows, formats, threads, batch,
              lambda r: (r["p50_ms"] / r["batch"], (r["p90_ms"] - r["p50_ms"]) / r["batch"]))
        ax.set_ylabel("p50 ms per image (whisker: p90)")
        ax.set_title(f"batch {batch}")
        if fractions:
            ax = axes[1][col]
            _bars(ax, rows, formats, threads, batch,
                  lambda r: None if r.get("ceiling_fraction") is None else (100 * r["ceiling_fraction"], 0.0))
            ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylabel("% of own matmul ceiling (int8 files: int8)")
            ax.set_title(f"batch {batch}: achieved GMAC/s / ceiling")
    load = record["machine"].get("load_average")
    fig.suptitle(f"{record['model']['input_hw'][0]} px, {record['machine'].get('cpu_model')}, "
                 f"{record['machine'].get('usable_cpus')} CPUs; {str(record.get('created', ''))[:16]}"
                 + (f"; load average {load[0]:.1f}" if load else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
