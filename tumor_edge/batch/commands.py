"""The `batch` command: score a folder or bucket of scans on Ray (a local instance, or a cluster). Imports only
click at module level; Ray, pyarrow and the runtime load when the command runs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source")
@click.option("--model", "-m", metavar="BUNDLE", default=None,
              help="Bundle folder (or a model file in one). Default: $TUMOR_EDGE_MODEL, else the last export. It "
                   "must be at this path on every node.")
@click.option("--out", "out", metavar="RESULTS", required=True,
              help="Folder (or URI) for the Parquet results; a rerun with the same RESULTS scores only what is "
                   "missing.")
@click.option("--model-file", metavar="NAME", default=None,
              help="Run this file of the bundle (default: each node's own measured choice).")
@click.option("--address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster to run on (host:port; default $RAY_ADDRESS, else a local Ray on 127.0.0.1).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Actors scoring in parallel (each opens the bundle once).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="CPUs Ray reserves per actor; its engine runs that many threads.")
@click.option("--rows-per-task", type=click.IntRange(min=1), default=64, show_default=True,
              help="Inputs per Ray task (the unit retried, and written as one Parquet part).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per inference call.")
@click.option("--frames", type=click.Choice(["middle", "all"]), default="middle", show_default=True,
              help="Multi-frame files: the middle frame or every frame (as classify).")
@click.option("--axis", type=click.Choice(["axial", "coronal", "sagittal"]), default="axial", show_default=True,
              help="Volumes: the plane to cut slices in (as classify).")
@click.option("--slices", default="middle", show_default=True, metavar="middle|all|N",
              help="Volumes: which slices (as classify).")
@click.option("--abstain", is_flag=True, help="No label for a scan with a warning (as classify).")
@click.option("--csv", "as_csv", is_flag=True, help="Also write RESULTS/results.csv, classify --csv's rows.")
@click.option("--force", is_flag=True, help="Replace results in RESULTS made by another job (model, options).")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal, else a line every few seconds; "
                   "--no-progress: neither).")
@click.option("--trust", metavar="PUBLIC.pem", envvar="TUMOR_EDGE_TRUST", type=click.Path(path_type=str),
              help="Each worker refuses the bundle unless its signature verifies with this EC public key (at this "
                   "path on every node). Default: $TUMOR_EDGE_TRUST.")
@click.pass_context
def batch(ctx: click.Context, source: str, model: str | None, out: str, model_file: str | None,
          address: str | None, workers: int, cpus_per_worker: float, rows_per_task: int, batch_size: int,
          frames: str, axis: str, slices: str, abstain: bool, as_csv: bool, force: bool,
          show_progress: bool | None, trust: str | None) -> None:
    """Score every scan under SOURCE (a folder, or a URI pyarrow.fs reads: s3://, gs://...) on Ray, writing
    classify --csv's rows as a Parquet dataset under RESULTS.

    Each input gets its rows (a file that cannot be read: a row with its error) with its identity (path, bytes,
    mtime); a rerun with the same RESULTS scores only the inputs without rows, so a job stopped at any point
    finishes on the next run, every input once. Exit status: 0 all scored, 2 some inputs failed, 1 the job could
    not run. Research tool, not a diagnostic device.
    """
    from tumor_edge.batch.job import JobConfig, run
    from tumor_edge.batch.scorer import ScoreSettings
    from tumor_edge.contracts.bundle import resolve_model_path
    from tumor_edge.errors import ModelError

    bundle = resolve_model_path(model).resolve()
    if not bundle.exists():
        raise ModelError("no such bundle or model file", bundle)
    if trust:  # here first, for a one-line refusal before Ray starts; each worker checks its own copy again
        from tumor_edge.signing.trust import enforce_trust

        enforce_trust(bundle, trust)
        trust = str(Path(trust).resolve())
    if not (slices in ("middle", "all") or slices.isdigit()):
        raise click.BadParameter("middle, all or a number of slices", param_hint="--slices")
    settings = ScoreSettings(str(bundle), model_file, trust, frames, axis, slices, batch_size, abstain)
    config = JobConfig(source, out, settings, address, workers, cpus_per_worker, rows_per_task, as_csv, force,
                       show_progress)
    ctx.exit(run(config))
