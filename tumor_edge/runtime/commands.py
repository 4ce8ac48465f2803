"""`tumor-edge classify`: scans in, labels out, on a CPU with onnxruntime (or LiteRT), never TensorFlow.

Only click is imported at module level, so `tumor-edge --help` stays instant. Exit statuses: 0 every file
classified; 1 nothing useful could run (usage, model or output error, no scans, a reader that went away);
2 the batch ran but some inputs failed (each in one `error:` line); 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.errors import ConfigError, TumorEdgeError, one_line
from tumor_edge.signing import TRUST_ENV

MAX_LISTED_FAILURES = 20
TRUST_HELP = ("Refuse the bundle unless its signature (model.sig, `tumor-edge sign`) verifies with this EC public key, "
              "covers every file unchanged, and binds the bytes that run. Pins: PUBLIC.pem,min-version=UTC-TIME "
              "refuses older releases; PUBLIC.pem,bundle=SHA256 this signed bundle only. Default: $TUMOR_EDGE_TRUST "
              "(set but empty is an error).")
EXIT_FATAL, EXIT_SOME_FAILED = 1, 2


class ClassifyCommand(click.Command):
    """Usage errors exit 1 like every other error that stops the run before it starts; 2 means some inputs
    failed and the rest were classified, and a script must be able to tell the two apart. The help lists the
    input types from the readers' rows as they are when it is shown."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from tumor_edge.runtime.readers import readers_help

        template = self.help
        self.help = (template or "").replace("INPUT_TYPES", readers_help())
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = template

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            err.exit_code = EXIT_FATAL
            raise


class _WarningEcho(logging.Handler):
    """Warnings about inputs (tumor_edge.input) as `warning:` lines on stderr, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"warning: {one_line(record.getMessage())}", err=True)


@contextmanager
def _input_warnings() -> Iterator[None]:
    logger = logging.getLogger("tumor_edge.input")
    handler, propagate = _WarningEcho(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _detach_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again (Python's documented
    recipe for SIGPIPE); harmless where stdout has no file descriptor (tests)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except Exception:  # no descriptor (OSError, ValueError, io.UnsupportedOperation): nothing to protect
        pass


@click.command(cls=ClassifyCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str, readable=False))
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
              help="Multi-frame files (DICOM series, multi-page TIFF, animated GIF): classify the middle frame or "
                   "every frame (at most 1024 a file).")
@click.option("--axis", type=click.Choice(["axial", "coronal", "sagittal"]), default="axial", show_default=True,
              help="Volumes (NIfTI, DICOM series folders): the plane to cut slices in (the volume is first turned "
                   "to RAS; slices are shown radiologically, as the training scans were).")
@click.option("--slices", "slice_choice", default="middle", show_default=True, metavar="middle|all|N",
              callback=lambda ctx, param, value: _slices_option(value),
              help="Volumes: the middle slice of the brain, every slice that contains brain, or N slices spread "
                   "evenly over the brain's extent.")
@click.option("--providers", metavar="LIST", default=None,
              help="onnxruntime execution providers in priority order, comma-separated (e.g. CUDA,CPU), or "
                   "'auto' for every one this onnxruntime build has. Default: CPU.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Threads decoding images ahead of inference (0: decode inline).")
@click.option("--heatmap", "heatmap_dir", metavar="DIR", type=click.Path(path_type=str), default=None,
              help="Write an overlay PNG per scan or volume slice (where the model saw evidence for its class) into "
                   "DIR; JSON gives each PNG's path and the method that drew its map. Any model: its exact class "
                   "activation map when it has one of 4x4 cells or more, else occlusion through the model.")
@click.option("--heatmap-method", type=click.Choice(["auto", "cam", "occlusion", "rise"]), default="auto",
              show_default=True, help="With --heatmap: what draws the map (occlusion: grid*grid+1 inferences a "
              "scan; rise: 256 random masks; cam: the model's own map).")
@click.option("--heatmap-grid", type=click.IntRange(2, 64), default=8, show_default=True,
              help="With --heatmap: cells per side of occlusion and RISE maps.")
@click.option("--force", is_flag=True, help="With --heatmap: replace the overlay PNGs already in DIR.")
@click.option("--abstain", is_flag=True, help="Give no label for a scan with a warning (not a brain MRI slice, "
              "or unlike the training scans); its probabilities and warnings are still shown.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal and there are several files).")
@click.option("--trust", metavar="PUBLIC.pem[,PIN]", default=None, help=TRUST_HELP)
@click.pass_context
def classify(ctx: click.Context, paths: tuple[str, ...], model: str | None, model_file: str | None,
             as_json: bool, as_csv: bool, top_k: int | None, threads: int | None, batch_size: int, frames: str,
             axis: str, slice_choice: str | int, providers: str | None, workers: int, heatmap_dir: str | None,
             heatmap_method: str, heatmap_grid: int, force: bool, abstain: bool, show_progress: bool | None,
             trust: str | None) -> None:
    """Classify brain-MRI scans: image files, volumes, or folders (recursed).

    INPUT_TYPES Unreadable, special (FIFO, device) and oversized files are reported in one line each and
    skipped. Exit status: 0 all classified, 2 some inputs failed, 1 nothing could run (usage, model, output
    error). Research tool, not a diagnostic device.
    """
    if as_json and as_csv:
        usage = click.UsageError("choose one of --json and --csv", ctx)
        usage.exit_code = EXIT_FATAL
        raise usage
    from tumor_edge.contracts.bundle import resolve_model_path
    from tumor_edge.runtime.backends import BackendOptions
    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.postprocess import WRITERS, Failure, OutputError
    from tumor_edge.runtime.preprocess import scan_inputs

    debug = bool(ctx.obj and ctx.obj.get("debug"))

    scanned = scan_inputs(paths)
    problems = [Failure(p.source, p.message) for p in scanned.problems]
    if not scanned.files:
        for problem in problems:
            click.echo(f"error: {one_line(problem.message)}", err=True)
        raise TumorEdgeError(f"no scan files found in {', '.join(one_line(p) for p in paths)}")
    files = scanned.files
    one_image = len(files) == 1 and frames == "middle" and not scanned.is_volume(files[0])
    options = BackendOptions(threads=threads,
                             providers=[p.strip() for p in providers.split(",") if p.strip()] if providers
                             else None,
                             # one image: no arena (a lower peak); more: the arena keeps memory flat
                             memory_arena=not one_image)
    if trust is not None or TRUST_ENV in os.environ:  # the signing code loads only when a setting is made
        from tumor_edge.signing.trust import trust_policy

        options.trust = trust_policy(model, trust)
    classifier = Classifier.from_bundle(resolve_model_path(model), model_file=model_file, options=options)
    click.echo(f"note: {RESEARCH_NOTICE}", err=True)
    if missing := classifier.backend.missing_providers:
        click.echo(f"note: this onnxruntime has no {', '.join(missing)}; running on "
                   f"{', '.join(classifier.backend.providers)}", err=True)

    on_pixels = None
    if heatmap_dir is not None:
        import dataclasses

        from tumor_edge.runtime.explain import HEATMAP_ROLE, ExplainSettings, HeatmapWriter

        if heatmap_method == "cam" and HEATMAP_ROLE not in classifier.output_specs:
            raise ConfigError("--heatmap-method cam: this model has no class-activation map output (use auto, "
                              "occlusion or rise)", classifier.backend.path)
        heatmaps = HeatmapWriter(heatmap_dir, force, classifier,
                                 ExplainSettings(method=heatmap_method, grid=heatmap_grid))

        def on_pixels(result, pixels):
            """The prediction with its overlay PNG's path and map method (an overlay that cannot be written is a
            warning: the scan keeps its label)."""
            try:
                path = heatmaps.write(result, pixels)
            except TumorEdgeError as err:
                click.echo(f"warning: {err}", err=True)
                return result
            if path is None:
                return result
            return dataclasses.replace(result, heatmap_png=str(path), heatmap_method=heatmaps.last.label)

    fmt = "json" if as_json else "csv" if as_csv else "table"
    width = min(max(len(one_line(str(f))) for f in files), 60)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a class name the terminal cannot show: escaped
    produced_by = (classifier.backend.path.name, classifier.backend.name)
    click.echo(f"note: running {produced_by[0]} ({produced_by[1]})", err=True)
    writer = WRITERS[fmt](sys.stdout, classifier.classes, top_k, width, RESEARCH_NOTICE, model=produced_by)
    try:
        with _input_warnings():
            writer.header()
            for problem in problems:
                _report(problem, writer, debug)
            stream = classifier.iter_results(files, frames=frames, axis=axis, slices=slice_choice,
                                             batch_size=batch_size, workers=workers, abstain=abstain,
                                             on_pixels=on_pixels)
            with _progress_bar(len(files), show_progress) as (ticks, clear):
                failures = problems + _run(stream, writer, ticks, clear, debug)
    except BrokenPipeError:
        _detach_stdout()  # the reader has all it wanted (`| head`): stop quietly
        sys.exit(EXIT_FATAL)
    except OutputError:
        _detach_stdout()
        raise
    if failures:
        _summary(failures, len(files) + len(problems))
        ctx.exit(EXIT_SOME_FAILED)


def _slices_option(value: str) -> str | int:
    from tumor_edge.runtime.readers.base import parse_slices

    try:
        return parse_slices(value)
    except ConfigError as err:
        raise click.BadParameter(err.reason) from None


@contextmanager
def _progress_bar(n_files: int, show_progress: bool | None):
    """(the bar's ticks, one per input: an image file, a multi-frame file or a volume; whether result rows must
    first clear its line, rows and bar sharing the terminal)."""
    enabled = show_progress if show_progress is not None else (n_files > 1 and sys.stderr.isatty())
    if enabled:
        from tumor_edge.progress import progress

        ticks = progress(range(n_files), "classifying", length=n_files)
    else:
        ticks = iter(range(n_files))
    try:
        yield ticks, enabled and sys.stdout.isatty() and sys.stderr.isatty()
        for _ in ticks:
            pass
    finally:
        getattr(ticks, "close", lambda: None)()


def _report(failure, writer, debug: bool) -> None:
    """A failure on stdout (JSON, CSV rows) and as one `error:` line on stderr (traceback with --debug)."""
    writer.failure(failure)
    click.echo(f"error: {one_line(failure.message)}", err=True)
    if debug and failure.error is not None:
        import traceback

        traceback.print_exception(failure.error, file=sys.stderr)


def _run(stream, writer, ticks: Iterator, clear: bool, debug: bool) -> list:
    """Write every result as it comes (a picture's row, a failure, a volume's summary); return the failures.
    Failures also go to stderr at once."""
    from tumor_edge.runtime.postprocess import Failure, Prediction

    failures = []
    previous = None
    try:
        for result in stream:
            if clear:
                sys.stderr.write("\r\033[K")
            if isinstance(result, Prediction):
                writer.prediction(result)
            elif isinstance(result, Failure):
                failures.append(result)
                _report(result, writer, debug)
            else:
                writer.volume_summary(result)
            if result.source != previous:  # one tick per input, whatever its number of frames or slices
                previous = result.source
                next(ticks, None)
    finally:
        stream.close()
    return failures


def _summary(failures: list, n_files: int) -> None:
    sources = list(dict.fromkeys(f.source for f in failures))
    click.echo(f"{len(sources)} of {n_files} files failed and were skipped:", err=True)
    for failure in failures[:MAX_LISTED_FAILURES]:
        click.echo(f"  {one_line(failure.message)}", err=True)
    if len(failures) > MAX_LISTED_FAILURES:
        click.echo(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more", err=True)


def _under_the_cap(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from tumor_edge.runtime.choice import CAP

    if value is not None and value > CAP:
        raise click.BadParameter(f"{value:g} is above the cap {CAP:g} (a device further off is not this file)")
    return value


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Labelled scans to re-prove accuracy on: a dataset root (Testing/<class>/) or <class>/ folders.")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=None, callback=_under_the_cap,
              help="Largest accepted probability difference from the recorded class scores (default: a floor per "
                   "precision, or a multiple of the file's own recorded difference from the fp32 file if larger; "
                   "never above a fixed cap). Other outputs (heatmap, OOD features) keep their own tolerance, "
                   "relative to the recorded values' range.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--strict", is_flag=True, help="Require every listed model file to be present and checked here (by "
              "default a file not copied to this device, or whose engine is not installed, is listed as not "
              "checked and does not fail).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads the device's choice of the fastest file is timed at (default: the engine's, as classify).")
@click.option("--trust", metavar="PUBLIC.pem[,PIN]", default=None, help=TRUST_HELP)
def verify(bundle: str, data: str | None, tolerance: float | None, batch_size: int, strict: bool,
           threads: int | None, trust: str | None) -> None:
    """Check a model bundle: schema, model sha256s, and that this device reproduces the outputs export recorded
    (and, with --data, the accuracy on local labelled scans). Files this device cannot run are listed as not
    checked here, with the extra that would check them.

    Exit status 0 when every check passes, 1 on any problem (one `error:` line each). Research tool, not a
    diagnostic device.
    """
    policy = None
    if trust is not None or TRUST_ENV in os.environ:
        from tumor_edge.signing.trust import trust_policy

        policy = trust_policy(bundle, trust, err=False)  # first: a bundle whose signature fails is not checked further
    click.echo(f"note: {RESEARCH_NOTICE}", err=True)
    from tumor_edge.runtime.verify import verify_bundle

    report = verify_bundle(bundle, data=data, tolerance=tolerance, batch_size=batch_size, strict=strict,
                           threads=threads, trust=policy)
    for line in report.lines:
        click.echo(line)
    for problem in report.problems:
        click.echo(f"error: {problem}", err=True)
    if report.ok:
        checked = sum(1 for figures in report.files.values() if figures.get("reproduced"))
        unchecked = f"; {len(report.not_checked)} not checked here, listed above" if report.not_checked else ""
        click.echo(f"verify: {bundle}: all checks passed on this device ({checked} model file"
                   f"{'s' if checked != 1 else ''} checked{unchecked})")
        return
    click.echo(f"verify: {bundle}: {len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}",
               err=True)
    sys.exit(1)
