"""`tumor-edge bench`: latency of every file of a bundle (and the Keras reference), cold start, the machine; then
print, write and compare. Only click and the format table load with the CLI; the harness loads when it runs."""

from __future__ import annotations

from pathlib import Path

import click

from tumor_edge.contracts.formats import BY_KEY


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(i < 1 for i in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return list(dict.fromkeys(items))


def _str_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command()
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="Bundle folder or one of its model files (default: $TUMOR_EDGE_MODEL, else the last export).")
@click.option("--formats", callback=_str_list, default=None,
              help=f"Comma-separated formats to time, among {','.join(BY_KEY)},keras (default: all the bundle has).")
@click.option("--threads", callback=_int_list, default="1,2", show_default=True, help="Thread counts.")
@click.option("--batch", "batches", callback=_int_list, default="1,8", show_default=True, help="Batch sizes.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Warm-up runs.")
@click.option("--min-runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed runs at least, per configuration.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Timed seconds at least, per configuration.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of scans to feed (default: the run's test split, else synthetic phantoms).")
@click.option("--image-count", type=click.IntRange(min=1), default=16, show_default=True,
              help="Distinct images cycled through.")
@click.option("--run", "run", type=click.Path(path_type=Path), default=None,
              help="Training run folder (or its model.keras) for the Keras reference "
                   "(default: the bundle's provenance).")
@click.option("--no-keras", is_flag=True, help="Skip the Keras reference even when TensorFlow is installed.")
@click.option("--cold-runs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Fresh processes per format for cold start (0: skip).")
@click.option("--no-ceiling", is_flag=True, help="Skip the float32 and int8 matmul ceiling measurements.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the full record (with every timing) as JSON; also OUT.md and OUT.png unless named.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path), default=None, help="Markdown report.")
@click.option("--chart", "chart_out", type=click.Path(path_type=Path), default=None,
              help="PNG chart (latency by format and threads; needs matplotlib).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A saved --json record: print each figure's ratio to it and flag regressions.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help="Slowdown beyond which a figure counts as a regression (0.10 = 10 %).")
@click.option("--fail-on-regression", is_flag=True, help="Exit with status 4 when a regression is flagged.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(*, model: Path | None, formats: list[str] | None, threads: list[int], batches: list[int], warmup: int,
          min_runs: int, min_seconds: float, images: Path | None, image_count: int, run: Path | None, no_keras: bool,
          cold_runs: int, no_ceiling: bool, json_out: Path | None, md_out: Path | None, chart_out: Path | None,
          baseline: Path | None, tolerance: float, fail_on_regression: bool, force: bool, quiet: bool) -> None:
    """Time every file of a bundle through the runtime, with the Keras model as the reference.

    Warm-up, then at least --min-runs runs and --min-seconds seconds per format, thread count and batch size;
    reports min/p50/p90/p99/mean/std and images/s, ratios to Keras and to ONNX fp32, the achieved GMAC/s
    against this machine's matmul ceiling of the same arithmetic (float32, or onnxruntime's int8), onnxruntime
    int8 against LiteRT int8, cold start and peak memory, and the machine itself.
    """
    import json
    from dataclasses import asdict

    from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench
    from tumor_edge.bench.history import RegressionError, compare_records, load_record, render_comparison
    from tumor_edge.bench.report import render_chart, render_markdown, render_text
    from tumor_edge.contracts.bundle import resolve_model_path
    from tumor_edge.errors import OutputExistsError, TumorEdgeError

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
