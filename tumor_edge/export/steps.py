"""The one wrapper every converter runs through: start it where it belongs, time it, log it, and turn its exception
into a failed row, so one failing format never costs the others (the final table shows why).

Where a row runs:
- A row converted from the Keras model (its `needs` is None: tf2onnx, the TFLite converters) runs in the export's
  TensorFlow worker (export/worker.py), which loaded the model once; the worker runs them in table order.
- A row converted from another row's file (`needs`: ONNX fp16 and int8, made from the fp32 ONNX file by
  onnxruntime) needs no TensorFlow: it runs in a TensorFlow-free child process of its own (its memory goes back
  to the system when it ends). With `overlap` it starts as soon as the file it needs is there, beside the
  worker's remaining rows (the second core converts while the first quantizes); without, after the worker's
  rows, one at a time, so the export's peak is one job's.
With isolation off (or --debug) everything runs in this process, one row after the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tumor_edge.contracts.formats import ModelFormat
from tumor_edge.errors import first_line
from tumor_edge.export.context import ExportContext, ExportedFile
from tumor_edge.export.formats import converter_for
from tumor_edge.export.isolate import ChildJob, InlineJob
from tumor_edge.progress import progress

log = logging.getLogger("tumor_edge.export")


class _Step:
    """One row: its job (on the worker, in a child, or done inline) and what became of it."""

    def __init__(self, ctx: ExportContext, fmt: ModelFormat, worker=None):
        self.fmt, self.row, self.t0 = fmt, ExportedFile.of(fmt), time.perf_counter()
        self.dst = ctx.out / fmt.file
        self.on_worker = worker is not None
        self.job = None
        try:
            convert = converter_for(fmt.key)  # the function itself: it travels to the worker or child by reference
            if worker is not None:  # the worker logs the step's start and end when they happen
                self.job = worker.submit(convert, (ctx, self.dst), fmt.key, step=True)
            else:
                log.info("export step %s start", fmt.key)
                kind = InlineJob if (ctx.config.debug or not ctx.config.isolate) else ChildJob
                self.job = kind(convert, (ctx, self.dst), ctx.work, fmt.key)
        except Exception as err:  # an inline converter fails while starting; a child reports in wait()
            if ctx.config.debug:
                raise
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self.dst.unlink(missing_ok=True)
        self.row.status = f"failed: {first_line(err)}"

    def finish(self, ctx: ExportContext) -> ExportedFile:
        if self.job is not None:
            try:
                self.row.extra = dict(self.job.wait() or {})
            except Exception as err:  # tf2onnx, TFLite and onnxruntime raise many unrelated types
                if ctx.config.debug:
                    raise
                self._fail(err)
        if self.row.ok and not self.dst.is_file():
            self.row.status = "failed: the converter wrote no file"
        # The time the job ran (in the worker or its child), not the time it queued or waited to be collected.
        seconds = getattr(self.job, "seconds", None)
        self.row.seconds = seconds if seconds else time.perf_counter() - self.t0
        if not self.on_worker:
            log.info("export step %s %s in %.1f s%s", self.fmt.key, "done" if self.row.ok else "failed",
                     self.row.seconds, "" if self.row.ok else f": {self.row.status}")
        ctx.results[self.fmt.key] = self.row
        return self.row

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


class Steps:
    """Every row of one export: `start()` queues the TensorFlow rows on the worker (the caller may queue more
    work behind them), `finish_queued()` waits for them (starting derived rows beside them with `overlap`),
    `finish()` runs the rows left and returns every row in table order. Between the two the caller may end the
    worker, so the derived rows' memory never adds to TensorFlow's."""

    def __init__(self, ctx: ExportContext, formats: Sequence[ModelFormat], worker):
        self.ctx, self.formats, self.worker = ctx, list(formats), worker
        self.waiting = [f for f in self.formats if f.needs is not None]
        self._queued: list[_Step] = []
        self._running: list[_Step] = []

    @property
    def overlap(self) -> bool:
        config = self.ctx.config
        return config.overlap and config.isolate and not config.debug

    def start(self) -> Steps:
        self._queued = [_Step(self.ctx, f, self.worker) for f in self.formats if f.needs is None]
        return self

    def finish_queued(self) -> None:
        ctx = self.ctx
        try:
            bar = progress(self._queued, "exporting", length=len(self._queued), enabled=ctx.config.show_progress)
            for step in bar:
                step.finish(ctx)
                if self.overlap:  # start every row whose file is now there, beside the worker's next rows
                    ready = [f for f in self.waiting if f.needs in ctx.results]
                    self.waiting = [f for f in self.waiting if f not in ready]
                    self._running += [_Step(ctx, f) for f in ready]
        except BaseException:
            self.cancel()
            raise

    def finish(self) -> list[ExportedFile]:
        ctx = self.ctx
        try:
            for step in self._running:
                step.finish(ctx)
            for fmt in self.waiting:  # one at a time: the export's peak stays one job's
                _Step(ctx, fmt).finish(ctx)
        finally:
            self.cancel()
        return [ctx.results[f.key] for f in self.formats if f.key in ctx.results]

    def cancel(self) -> None:
        for step in self._queued + self._running:
            step.cancel()


def run_steps(ctx: ExportContext, formats: Sequence[ModelFormat], worker) -> list[ExportedFile]:
    """Convert every format; rows come back in table order."""
    steps = Steps(ctx, formats, worker).start()
    steps.finish_queued()
    return steps.finish()


__all__ = ["Steps", "run_steps"]
