"""`tumor-edge classify`: scans in, labels out, on a CPU with onnxruntime (or LiteRT), never TensorFlow.

Only click is imported here at module level; numpy, Pillow and onnxruntime load inside the command, so
`tumor-edge --help` stays instant and the first result of a one-image run comes as early as possible.
"""

from __future__ import annotations

import sys

import click

FORMATS = ("table", "json", "csv")
MAX_LISTED_FAILURES = 20


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-m", "--model", metavar="BUNDLE_OR_FILE",
              help="Bundle folder, a model file in one (BUNDLE/model_fp32.onnx, .tflite), or a lone .onnx "
                   "with tumor-edge metadata. Default: $TUMOR_EDGE_MODEL, else the bundle `tumor-edge export` "
                   "wrote last (recorded in $XDG_STATE_HOME/tumor-edge/last_bundle, by default "
                   "~/.local/state/tumor-edge/last_bundle).")
@click.option("--model-file", metavar="NAME", help="Which file of the bundle to run (default: the metadata's "
              "preferred one, int8 ONNX first).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout (failures as {\"file\", \"error\"}).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout: file, frame, label, confidence, one column "
              "per class.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None, help="Show the K most likely classes.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads (default: all physical cores).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per inference call.")
@click.option("--frames", type=click.Choice(["middle", "all"]), default="middle", show_default=True,
              help="Multi-frame DICOM: classify the middle frame or every frame.")
@click.option("--providers", metavar="LIST", default=None,
              help="onnxruntime execution providers in priority order, comma-separated (e.g. CUDA,CPU), or "
                   "'auto' for every one this onnxruntime build has. Default: CPU.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Threads decoding images ahead of inference (0: decode inline).")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal and there are several files).")
@click.pass_context
def classify(ctx: click.Context, paths: tuple[str, ...], model: str | None, model_file: str | None,
             as_json: bool, as_csv: bool, top_k: int | None, threads: int | None, batch_size: int, frames: str,
             providers: str | None, workers: int, show_progress: bool | None) -> None:
    """Classify brain-MRI scans: image files or folders (recursed).

    JPEG, PNG (8/16-bit, grey, RGBA, palette), BMP, TIFF and DICOM (.dcm or suffix-less; needs the `dicom`
    extra). Unreadable files are reported and skipped; the exit code is 2 if any failed. Research tool, not a
    diagnostic device.
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    from tumor_edge import RESEARCH_NOTICE
    from tumor_edge.contracts.state import resolve_model_path
    from tumor_edge.errors import TumorEdgeError
    from tumor_edge.runtime.backends import BackendOptions
    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.inputs import expand_inputs
    from tumor_edge.runtime.output import WRITERS

    debug = bool(ctx.obj and ctx.obj.get("debug"))
    files = expand_inputs(paths)
    if not files:
        raise TumorEdgeError(f"no scan files found in {', '.join(paths)}")
    options = BackendOptions(threads=threads,
                             providers=[p.strip() for p in providers.split(",") if p.strip()] if providers
                             else None)
    classifier = Classifier.from_bundle(resolve_model_path(model), model_file=model_file, options=options)
    click.echo(f"note: {RESEARCH_NOTICE}", err=True)
    missing = getattr(classifier.backend, "missing_providers", [])
    if missing:
        click.echo(f"note: this onnxruntime has no {', '.join(missing)}; running on "
                   f"{', '.join(classifier.backend.providers)}", err=True)

    fmt = "json" if as_json else "csv" if as_csv else "table"
    width = min(max(len(str(f)) for f in files), 60)
    writer = WRITERS[fmt](sys.stdout, classifier.classes, top_k, width)
    writer.header()
    stream = classifier.iter_predictions(files, batch_size=batch_size, frames=frames, workers=workers)
    failures = _run(stream, writer, len(files), show_progress, debug)
    _summary(failures, len(files))
    if failures:
        ctx.exit(2)


def _run(stream, writer, n_files: int, show_progress: bool | None, debug: bool) -> list:
    """Write every result as it comes; return the failures. Failures also go to stderr at once."""
    from tumor_edge.progress import progress

    enabled = show_progress if show_progress is not None else (n_files > 1 and sys.stderr.isatty())
    bar = progress(range(n_files), "classifying", length=n_files, enabled=enabled)
    clear = enabled and sys.stdout.isatty() and sys.stderr.isatty()  # rows and bar share the terminal
    failures = []
    previous = None
    try:
        for result in stream:
            if clear:
                sys.stderr.write("\r\033[K")
            if result.ok:
                writer.prediction(result)
            else:
                failures.append(result)
                writer.failure(result)
                click.echo(f"error: {result.message}", err=True)
                if debug and result.error is not None:
                    import traceback

                    traceback.print_exception(result.error, file=sys.stderr)
            if result.source != previous:  # one tick per file, whatever its number of frames
                previous = result.source
                next(bar, None)
        for _ in bar:
            pass
    finally:
        bar.close()
        stream.close()
    return failures


def _summary(failures: list, n_files: int) -> None:
    if not failures:
        return
    sources = list(dict.fromkeys(f.source for f in failures))
    click.echo(f"{len(sources)} of {n_files} files failed and were skipped:", err=True)
    for failure in failures[:MAX_LISTED_FAILURES]:
        click.echo(f"  {failure.message}", err=True)
    if len(failures) > MAX_LISTED_FAILURES:
        click.echo(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more", err=True)
