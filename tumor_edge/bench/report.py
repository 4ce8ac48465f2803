"""A benchmark record rendered for people: the screen table, Markdown and a PNG chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# (header, cell) per column of the results table; one list serves the screen and Markdown.
RESULT_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("format", lambda r: r["format"]),
    ("threads", lambda r: str(r["threads"])),
    ("batch", lambda r: str(r["batch"])),
    ("runs", lambda r: str(r["runs"])),
    ("min ms", lambda r: _ms(r["min_ms"])),
    ("p50 ms", lambda r: _ms(r["p50_ms"])),
    ("p90 ms", lambda r: _ms(r["p90_ms"])),
    ("p99 ms", lambda r: _ms(r["p99_ms"])),
    ("mean ms", lambda r: _ms(r["mean_ms"])),
    ("std ms", lambda r: _ms(r["std_ms"])),
    ("img/s", lambda r: _num(r["images_per_s"])),
    ("vs Keras", lambda r: _ratio(r.get("vs_keras"))),
    ("vs ONNX fp32", lambda r: _ratio(r.get("vs_onnx_fp32"))),
    ("GMAC/s", lambda r: _num(r.get("gmacs"))),
    ("of ceiling", lambda r: _pct(r.get("ceiling_fraction"))),
]

COLD_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("format", lambda c: c["format"]),
    ("file", lambda c: c["file"]),
    ("first result s (median)", lambda c: _num(c["median_s"], ".2f")),
    ("min s", lambda c: _num(c["min_s"], ".2f")),
    ("peak RSS MB", lambda c: _num(c["peak_rss_mb"], ".0f")),
    ("import s", lambda c: _num(c.get("child", {}).get("import_s"), ".2f")),
    ("load s", lambda c: _num(c.get("child", {}).get("load_s"), ".2f")),
    ("1st inference s", lambda c: _num(c.get("child", {}).get("first_inference_s"), ".2f")),
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
    if need is not None and g.get("reachable_in_fp32") is not None:  # a float32 numerator: bound by the ceiling
        line += f"; meeting it needs {need:.0%} of the float32 matmul ceiling"
        if g.get("reachable_in_fp32") is False:
            line += ": beyond this machine's float32 arithmetic"
    return line


def _goal_lines(record: Record) -> list[str]:
    return [_goal_line(g) for g in record.get("goals", [])]


def _header_lines(record: Record) -> list[str]:
    model = record["model"]
    gmac = model.get("gmac_per_image")
    ceilings = ", ".join(f"{c['threads']} thr {c['best_gmacs']:.1f}" for c in record.get("ceiling", []))
    load = record["machine"].get("load_average")
    return [
        f"machine: {machine_summary(record['machine'])}",
        f"model: {model['source']} ({model['input_hw'][0]}x{model['input_hw'][1]}, "
        f"{_num(gmac, '.2f')} GMAC/image); inputs: {model['inputs']}",
        f"float32 matmul ceiling (best GMAC/s of {len(record.get('ceiling_passes', []))} passes): "
        f"{ceilings or 'not measured'}; load average at start "
        f"{load}, at end {record.get('load_average_end')}",
    ]


def render_text(record: Record) -> str:
    """The screen report."""
    rows = [[cell(r) for _, cell in RESULT_COLUMNS] for r in _sorted_rows(record)]
    parts = [*_header_lines(record), "", _text_table([h for h, _ in RESULT_COLUMNS], rows)]
    if record.get("cold_start"):
        cold = [[cell(c) for _, cell in COLD_COLUMNS] for c in record["cold_start"]]
        parts += ["", "cold start (fresh process to first result, one image):",
                  _text_table([h for h, _ in COLD_COLUMNS], cold)]
    if record.get("goals"):
        parts += ["", *_goal_lines(record)]
    for s in record.get("skipped", []):
        parts.append(f"skipped {s['format']} ({s['file']}): {s['reason']}")
    parts.append(f"took {record['duration_s']:.0f} s")
    return "\n".join(parts)


def render_markdown(record: Record, chart: str | None = None, level: int = 1, title: str | None = None) -> str:
    """The record as Markdown; `level` sets the heading depth so the history README can embed it."""
    h = "#" * level
    rows = [[cell(r) for _, cell in RESULT_COLUMNS] for r in _sorted_rows(record)]
    parts = [f"{h} {title or 'tumor-edge benchmark, ' + record['created']}", "",
             *(f"- {line}" for line in _header_lines(record)), "",
             "Latency per call (one call = one batch); ratios are p50 over the reference's p50 at the same "
             "threads and batch; GMAC/s at the p50, as a fraction of the float32 matmul ceiling (int8 can exceed it).",
             "",
             _md_table([h for h, _ in RESULT_COLUMNS], rows)]
    if record.get("cold_start"):
        cold = [[cell(c) for _, cell in COLD_COLUMNS] for c in record["cold_start"]]
        parts += ["", f"{h}# Cold start", "", _md_table([h for h, _ in COLD_COLUMNS], cold)]
    if record.get("goals"):
        parts += ["", f"{h}# Goals", "", *(f"- {line}" for line in _goal_lines(record))]
    if record.get("skipped"):
        parts += ["", f"{h}# Skipped", "", *(f"- {s['format']} ({s['file']}): {s['reason']}"
                                          for s in record["skipped"])]
    if chart:
        parts += ["", f"![latency by format and threads]({chart})"]
    return "\n".join(parts) + "\n"


def render_chart(record: Record, path: Path) -> Path | None:
    """Bars of p50 latency per image by format, one group per thread count, one panel per batch size; the
    whisker reaches the p90. None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = record["results"]
    batches = sorted({r["batch"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    formats = list(dict.fromkeys(r["format"] for r in rows))
    index = {(r["format"], r["threads"], r["batch"]): r for r in rows}
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    width = 0.8 / max(1, len(threads))
    for ax, batch in zip(axes[0], batches):
        for j, t in enumerate(threads):
            xs, heights, errs = [], [], []
            for i, fmt in enumerate(formats):
                row = index.get((fmt, t, batch))
                if row:
                    xs.append(i + (j - (len(threads) - 1) / 2) * width)
                    heights.append(row["p50_ms"] / batch)
                    errs.append((row["p90_ms"] - row["p50_ms"]) / batch)
            ax.bar(xs, heights, width, yerr=[[0] * len(errs), errs], capsize=2, label=f"{t} thread(s)")
        ax.set_xticks(range(len(formats)))
        ax.set_xticklabels(formats, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("p50 ms per image (whisker: p90)")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=8)
    load = record["machine"].get("load_average")
    fig.suptitle(f"{record['model']['input_hw'][0]} px, {record['machine'].get('cpu_model')}, "
                 f"{record['machine'].get('usable_cpus')} CPUs; {str(record.get('created', ''))[:16]}"
                 + (f"; load average {load[0]:.1f}" if load else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
