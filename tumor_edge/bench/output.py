"""What `tumor-edge bench` does once its options are parsed: run, print, write, compare."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from tumor_edge.bench.harness import BenchConfig, run_bench
from tumor_edge.bench.history import RegressionError, compare_records, load_record, render_comparison
from tumor_edge.bench.report import render_chart, render_markdown, render_text
from tumor_edge.bench.timing import RunPlan
from tumor_edge.contracts.state import resolve_model_path
from tumor_edge.errors import OutputExistsError, TumorEdgeError


def run_command(*, model: Path | None, formats: list[str] | None, threads: list[int], batches: list[int],
                warmup: int, min_runs: int, min_seconds: float, images: Path | None, image_count: int,
                run: Path | None, no_keras: bool, cold_runs: int, no_ceiling: bool, json_out: Path | None,
                md_out: Path | None, chart_out: Path | None, baseline: Path | None, tolerance: float,
                fail_on_regression: bool, force: bool, quiet: bool) -> dict:
    if json_out is not None:  # --json OUT also names OUT.md and OUT.png unless those are given
        md_out, chart_out = md_out or json_out.with_suffix(".md"), chart_out or json_out.with_suffix(".png")
    for path in (json_out, md_out, chart_out):
        if path is not None and path.exists() and not force:
            raise OutputExistsError("already exists (pass --force to overwrite)", path)
    base_record = load_record(baseline) if baseline is not None else None  # fail early on a bad baseline
    for path in (json_out, md_out, chart_out):
        if path is not None and not path.parent.is_dir():
            raise TumorEdgeError("output folder does not exist", path.parent)
    config = BenchConfig(model=resolve_model_path(model), formats=formats, threads=threads, batches=batches,
                         plan=RunPlan(warmup, min_runs, min_seconds), images=images, image_count=image_count,
                         run=run, keras=not no_keras, cold_start=cold_runs > 0, cold_runs=cold_runs,
                         ceiling=not no_ceiling, show_progress=not quiet)
    record = run_bench(config)
    click.echo(render_text(record))
    chart_written = render_chart(record, chart_out) if chart_out is not None else None
    if chart_out is not None and chart_written is None:
        click.echo("chart skipped: matplotlib is not installed", err=True)
    comparisons = []
    if base_record is not None:
        comparisons = compare_records(record, base_record, tolerance)
        record["baseline"] = {"file": str(baseline), "tolerance": tolerance,
                              "comparisons": [asdict(c) for c in comparisons]}
        click.echo("")
        click.echo(render_comparison(comparisons, baseline, tolerance))
    if json_out is not None:
        json_out.write_text(json.dumps(record, indent=1) + "\n")
    if md_out is not None:
        chart_ref = None
        if chart_written is not None:
            try:
                chart_ref = str(chart_written.resolve().relative_to(md_out.resolve().parent))
            except ValueError:
                chart_ref = str(chart_written.resolve())
        md_out.write_text(render_markdown(record, chart_ref))
    written = [str(p) for p in (json_out, md_out, chart_written) if p is not None]
    if written:
        click.echo("wrote " + ", ".join(written), err=True)
    regressions = [c for c in comparisons if c.regressed]
    if fail_on_regression and regressions:
        raise RegressionError(f"{len(regressions)} figure(s) slower than the baseline {baseline} beyond "
                              f"{tolerance:.0%}")
    return record
