"""`tumor-edge bench`: latency of every file of a bundle (and the Keras reference), cold start, the machine.
Only click and the format table load with the CLI; the harness loads when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
def bench(**options: Any) -> None:
    """Time every file of a bundle through the runtime, with the Keras model as the reference.

    Warm-up, then at least --min-runs runs and --min-seconds seconds per format, thread count and batch size;
    reports min/p50/p90/p99/mean/std and images/s, ratios to Keras and to ONNX fp32, the achieved GMAC/s
    against this machine's matmul ceiling of the same arithmetic (float32, or onnxruntime's int8), onnxruntime
    int8 against LiteRT int8, cold start and peak memory, and the machine itself.
    """
    from tumor_edge.bench.output import run_command

    run_command(**options)
