"""Export's plan as plain data, and the conversions it lists carried out.

`plan_export` decides from the options and the source's kind alone which rows of the format table the export
makes and where each runs; `Conversions` carries that out, each converter's exception turned into a failed row,
so one failing format never costs the others (the final table shows why). A row converted from the Keras model
runs in the export's TensorFlow worker, which loaded the model once; a row converted from another row's file
(`needs`) runs in a TensorFlow-free child of its own, whose memory goes back when it ends: with `overlap` as soon
as the file it needs is there, else after the worker has ended, one at a time, so the export's peak is one job's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tumor_edge.contracts import formats as format_table
from tumor_edge.contracts.formats import ModelFormat
from tumor_edge.errors import first_line
from tumor_edge.export.config import ExportConfig
from tumor_edge.export.context import ExportContext, ExportedFile
from tumor_edge.export.formats import converter_for
from tumor_edge.progress import progress
from tumor_edge.worker import Inline, Job, Worker

log = logging.getLogger("tumor_edge.export")

TENSORFLOW_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
SKIPPED = "skipped: "
# (source kind, container) -> why there is no route. A foreign ONNX model has none to TFLite in tumor-edge's
# dependencies (a TensorFlow re-implementation of an arbitrary graph would be a second model, not the same one):
# its TFLite rows show as skipped in the export table and the parity report, not failed, not silently absent.
NO_ROUTES: dict[tuple[str, str], str] = {("onnx", "tflite"): "no converter route from ONNX to TFLite"}


@dataclass(frozen=True)
class ExportPlan:
    """What an export makes and where: plain data, decided before anything is converted."""

    from_model: tuple[ModelFormat, ...]  # converted from the Keras model, in the TensorFlow worker, in order
    from_files: tuple[ModelFormat, ...]  # converted from another row's file, each in a TensorFlow-free child
    skipped: tuple[tuple[ModelFormat, str], ...]  # rows this source has no route to, and why
    overlap: bool  # from_files rows start beside the worker's rows


def plan_export(config: ExportConfig, source_kind: str) -> ExportPlan:
    selected = config.selected()
    skipped = tuple((f, SKIPPED + NO_ROUTES[source_kind, f.format]) for f in selected
                    if (source_kind, f.format) in NO_ROUTES)
    made = [f for f in selected if f not in {s for s, _ in skipped}]
    return ExportPlan(tuple(f for f in made if f.needs is None), tuple(f for f in made if f.needs is not None),
                      skipped, config.overlap and config.isolate and not config.debug)


def converted(convert: Callable, key: str, *args: Any) -> Any:
    """`convert(*args)` (a row's converter, loading the model, the Keras outputs), logged as an export step where
    it runs (benchmarks/export_memory.py charges memory by these lines)."""
    log.info("export step %s start", key)
    t0 = time.perf_counter()
    try:
        value = convert(*args)
    except BaseException as err:
        log.info("export step %s failed in %.1f s: %s", key, time.perf_counter() - t0, first_line(err))
        raise
    log.info("export step %s done in %.1f s", key, time.perf_counter() - t0)
    return value


class _Row:
    """One row's job (on the worker or in a child of its own) and what became of it."""

    def __init__(self, ctx: ExportContext, fmt: ModelFormat, runner: Worker | Inline | None = None):
        self.fmt, self.row, self.dst, self.t0 = fmt, ExportedFile.of(fmt), ctx.out / fmt.file, time.perf_counter()
        self.own = runner is None  # a child started for this row alone
        self.runner = runner or (Worker(f"export {fmt.key}", env=TENSORFLOW_ENV)
                                 if ctx.config.isolate and not ctx.config.debug else Inline())
        self.job: Job | None = None
        try:
            self.job = self.runner.submit(converted, converter_for(fmt.key), fmt.key, ctx, self.dst, name=fmt.key)
        except Exception as err:  # a converter run here fails while starting
            if ctx.config.debug:
                raise
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self.dst.unlink(missing_ok=True)
        self.row.status = f"failed: {first_line(err)}"

    def finish(self, ctx: ExportContext) -> ExportedFile:
        try:
            if self.job is not None:
                self.row.extra = dict(self.job.wait() or {})
        except Exception as err:  # tf2onnx, TFLite and onnxruntime raise many unrelated types
            if ctx.config.debug:
                raise
            self._fail(err)
        finally:
            if self.own:
                self.runner.close()
        if self.row.ok and not self.dst.is_file():
            self.row.status = "failed: the converter wrote no file"
        job = self.job
        self.row.seconds = job.seconds if job is not None and job.seconds else time.perf_counter() - self.t0
        if job is not None and isinstance(self.runner, Worker):  # the process's own account of the job
            log.info("export job %s %s in %.1f s (CPU %.1f s; worker RSS %s MB at its end, %s MB released)",
                     self.fmt.key, "done" if self.row.ok else "failed", job.seconds, job.cpu_seconds,
                     _mb(job.rss_mb), _mb(job.released_rss_mb))
        ctx.results[self.fmt.key] = self.row
        return self.row

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
        if self.own:
            self.runner.close(kill=True)


def is_skipped(row: ExportedFile) -> bool:
    return row.status.startswith(SKIPPED)


def _mb(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "?"


class Conversions:
    """The plan's rows: `start()` queues the Keras rows on the worker (the caller may queue more work behind
    them), `finish_queued()` waits for them (starting derived rows beside them with `overlap`), `finish()` runs
    the rows left and returns every row, skipped ones included, in table order. Between the two the caller ends
    the worker, so the derived rows' memory never adds to TensorFlow's."""

    def __init__(self, ctx: ExportContext, plan: ExportPlan, worker: Worker | Inline):
        self.ctx, self.plan, self.worker = ctx, plan, worker
        self.waiting = list(plan.from_files)
        self._queued: list[_Row] = []
        self._running: list[_Row] = []

    def start(self) -> Conversions:
        self._queued = [_Row(self.ctx, f, self.worker) for f in self.plan.from_model]
        return self

    def finish_queued(self) -> None:
        ctx = self.ctx
        try:
            for row in progress(self._queued, "exporting", length=len(self._queued),
                                enabled=ctx.config.show_progress):
                row.finish(ctx)
                if self.plan.overlap:  # every row whose file is now there starts beside the worker's next rows
                    ready = [f for f in self.waiting if f.needs in ctx.results]
                    self.waiting = [f for f in self.waiting if f not in ready]
                    self._running += [_Row(ctx, f) for f in ready]
        except BaseException:
            self.cancel()
            raise

    def finish(self) -> list[ExportedFile]:
        ctx = self.ctx
        try:
            for row in self._running:
                row.finish(ctx)
            for fmt in self.waiting:  # one at a time: the export's peak stays one job's
                _Row(ctx, fmt).finish(ctx)
        finally:
            self.cancel()
        rows = [ctx.results[f.key] for f in self.plan.from_model + self.plan.from_files if f.key in ctx.results]
        rows += [replace(ExportedFile.of(fmt), status=why) for fmt, why in self.plan.skipped]
        order = {f.key: i for i, f in enumerate(format_table.FORMATS)}
        return sorted(rows, key=lambda r: order.get(r.key, len(order)))

    def cancel(self) -> None:
        for row in self._queued + self._running:
            row.cancel()
