"""The one wrapper every converter runs through: start it (in a child process or here), time it, log it, and turn
its exception into a failed row, so one failing format never costs the others (the final table shows why).

With `overlap`, rows the table marks `background` start first and run in their own process while the others
convert (TFLite's int8 calibrator is single-threaded and the longest step; overlapping it with the rest uses the
second core). Off by default: two TensorFlow converters at once double the peak memory (measured at 299 px:
about 1.7 GB each), and the export's budget is 3 GB (issue 13; benchmarks/export_memory.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tumor_edge.contracts.formats import ModelFormat
from tumor_edge.errors import first_line
from tumor_edge.export.context import ExportContext, ExportedFile
from tumor_edge.export.isolate import ChildJob, InlineJob
from tumor_edge.progress import progress

log = logging.getLogger("tumor_edge.export")


class _Running:
    def __init__(self, ctx: ExportContext, fmt: ModelFormat):
        self.fmt, self.row, self.t0 = fmt, ExportedFile.of(fmt), time.perf_counter()
        self.dst = ctx.out / fmt.file
        log.info("export step %s start", fmt.key)
        kind = InlineJob if (ctx.config.debug or not ctx.config.isolate) else ChildJob
        self.job = None
        try:
            self.job = kind(fmt.converter, (ctx, self.dst), ctx.work, fmt.key)
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
        self.row.seconds = time.perf_counter() - self.t0
        if self.fmt.background:
            self.row.extra["background"] = True
        log.info("export step %s %s in %.1f s%s", self.fmt.key, "done" if self.row.ok else "failed",
                 self.row.seconds, "" if self.row.ok else f": {self.row.status}")
        ctx.results[self.fmt.key] = self.row
        return self.row

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


def run_steps(ctx: ExportContext, formats: Sequence[ModelFormat]) -> list[ExportedFile]:
    """Convert every format; rows come back in table order."""
    background = [f for f in formats if f.background and f.needs is None] if ctx.config.overlap else []
    foreground = [f for f in formats if f not in background]
    started: list[_Running] = []
    try:
        started = [_Running(ctx, f) for f in background]
        for fmt in progress(foreground, "exporting", length=len(foreground), enabled=ctx.config.show_progress):
            _Running(ctx, fmt).finish(ctx)
        for running in started:
            running.finish(ctx)
    finally:
        for running in started:
            running.cancel()
    return [ctx.results[f.key] for f in formats if f.key in ctx.results]


__all__ = ["run_steps"]
