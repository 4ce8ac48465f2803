"""A benchmark record as a PNG, one column of panels per batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _bars(ax: Any, rows: dict, formats: list[str], threads: list[int], batch: int, value) -> None:
    width = 0.8 / max(1, len(threads))
    for j, t in enumerate(threads):
        xs, heights, errs = [], [], []
        for i, fmt in enumerate(formats):
            row = rows.get((fmt, t, batch))
            got = value(row) if row else None
            if got is not None:
                xs.append(i + (j - (len(threads) - 1) / 2) * width)
                heights.append(got[0])
                errs.append(got[1])
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
