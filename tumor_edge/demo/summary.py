"""The closing summary of `tumor-edge demo` (also written to WORKDIR/SUMMARY.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tumor_edge.demo.context import DemoContext


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def render_summary(ctx: DemoContext) -> str:
    r = ctx.results
    data, train, export = r.get("data", {}), r.get("train", {}), r.get("export", {})
    classify, bench = r.get("classify", {}), r.get("bench", {})
    total = sum(v for k, v in ctx.timings.items() if k != "this invocation")
    lines = [
        "# tumor-edge demo: summary",
        "",
        "**SYNTHETIC DATA.** These figures come from slices of real MRI templates with simulated tumours, made "
        "by `tumor-edge demo-data`. They show that the pipeline works end to end; they say nothing about how a "
        "model does on patients. The real thing: `tumor-edge train PATH` on a real dataset folder "
        "(`PATH/Training/<class>/`, `PATH/Testing/<class>/`). Research tool, not a diagnostic device.",
        "",
        f"{ctx.profile.describe()}; stages took {_minutes(total)} in all"
        + (f" (reused: {', '.join(ctx.skipped)})" if ctx.skipped else "") + ".",
        "",
        "## Where everything is",
        f"- demo data: `{data.get('path')}` ({data.get('train_per_class')} Training + "
        f"{data.get('test_per_class')} Testing images per class; Testing from {data.get('held_out')}; "
        "see its DATASET.md)",
        f"- training run: `{train.get('path')}` (the model, its metrics, history and ROC/confusion/curve PNGs)",
        f"- model bundle: `{export.get('path')}` ({', '.join(export.get('files', []))}, metadata.json, "
        "parity.md)",
        f"- held-out classifications: `{ctx.workdir / 'classify.json'}`; latency: `{bench.get('path')}` and "
        "bench.md",
        "",
        "## Test accuracy (held-out anatomy, Keras model)",
        f"accuracy {_pct(train.get('accuracy'))}, macro one-vs-rest AUC "
        f"{'n/a' if train.get('macro_auc') is None else format(train['macro_auc'], '.3f')} on "
        f"{train.get('n_test')} test scans; recall per class: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in train.get("per_class", {}).items()),
        "",
        "## Parity of the exported files (through the runtime, on the test split)",
        parity_headline(export),
        "",
        "```",
        (export.get("table") or "(no table)").rstrip(),
        "```",
        "",
        "## Latency per format (batch 1, 2 threads)",
    ]
    latency = bench.get("latency", {})
    if latency:
        lines += ["| format | p50 ms | p90 ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} |" if v.get("p90_ms") is not None
                  else f"| {k} | {v['p50_ms']:.2f} | |" for k, v in latency.items()]
        if bench.get("cpu"):
            lines.append(f"\non {bench['cpu']}")
    else:
        lines.append("(no latency figures)")
    rows = classify.get("rows", [])
    lines += ["", f"## Held-out scans classified with {classify.get('model')} "
                  f"({classify.get('correct', 0)}/{len(rows)} correct)"]
    lines += [f"- `{row['file']}`: true {row['true']}, predicted {row['predicted']} ({row['confidence']:.2f})"
              for row in rows]
    trust = r.get("trust", {}).get("markdown")
    if trust:
        lines += ["", trust.rstrip()]
    where = r.get("explain", {}).get("markdown")
    if where:
        lines += ["", where.rstrip()]
    lines += ["", "## Stage times", *[f"- {k}: {_minutes(v)}" for k, v in ctx.timings.items()], "",
              "Next: `tumor-edge classify SCAN.jpg` uses this bundle; `tumor-edge bench --model "
              f"{export.get('path')}` times it fully; `tumor-edge train PATH` trains on real data.", ""]
    return "\n".join(lines)


def parity_headline(export: dict[str, Any]) -> str:
    """Each file's verdict, never "passed" above rows that read "not proven"."""
    if not export.get("parity_passed"):
        return f"FAILED: {export.get('parity_failure')}"
    verdicts: dict[str, str] = export.get("parity_files") or {}
    if not verdicts:
        return f"parity verdict: {export.get('parity_verdict', 'not checked')}"
    groups: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        groups.setdefault(verdict, []).append(name)
    parts = [f"{len(names)} {'pass' if v == 'pass' else v} ({', '.join(f'`{n}`' for n in sorted(names))})"
             for v, names in sorted(groups.items(), key=lambda kv: ("pass", "not proven", "fail").index(kv[0])
                                    if kv[0] in ("pass", "not proven", "fail") else 3)]
    line = "Per file: " + "; ".join(parts) + "."
    if "not proven" in groups:
        line += (" Not proven: the test split is too small to show the tolerances hold (nor that they fail); "
                 "parity.md says how many test images would.")
    return line
