"""One long-lived TensorFlow process per export: the model is loaded once and every TensorFlow job (loading and
checking the model, tf2onnx, the SavedModel and the three TFLite conversions, the Keras reference) runs in it, in
the order submitted, while the parent stays free of TensorFlow and does the rest (onnxruntime work, parity).

Why one worker and not a process per job (0.2's export/isolate.py default): each spawned job paid a TensorFlow
import and a model load (measured at 299 px: export 293 s with a child per job against 147 s in one process, at
the same peak memory after tf2onnx's graph copies were fixed at their root). Why not the parent itself: the
parent would keep TensorFlow's ~1 GB and whatever the converters leave behind while onnxruntime quantizes and
parity runs (in-process export peaked at 3.2 GB, over the 3 GB budget). The worker collects and trims its heap
after every job (`_release`), so what a converter allocated is given back before the next one starts.

The worker's log records travel to the parent's logging through a queue, so `export step ... start/done` lines
come out when the step really starts and ends (benchmarks/export_memory.py charges memory by them). A worker
that dies (killed for memory) fails the job it ran and the ones queued behind it with a one-line error; the next
job submitted starts a fresh worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from tumor_edge.export.isolate import ChildFailed, _outcome, _unwrap, resolve

log = logging.getLogger("tumor_edge.export")


def _release() -> None:
    """Give back what the last job freed: Python's cycles (tf2onnx and Keras make many), then glibc's free
    lists (malloc keeps freed chunks, in per-thread arenas, for reuse; TensorFlow's threads fill many arenas)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): the collection is what we can do
        pass


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _init(log_queue, level: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from logging.handlers import QueueHandler

    logger = logging.getLogger("tumor_edge")
    logger.handlers[:] = [QueueHandler(log_queue)]
    logger.setLevel(level)
    logger.propagate = False


def _run(target: str | Callable, args: tuple, name: str, step: bool) -> dict[str, Any]:
    """In the worker: one job, timed, logged as an export step when it is one, then the heap released."""
    if step:
        log.info("export step %s start", name)
    t0, cpu0 = time.perf_counter(), time.process_time()
    outcome = _outcome(target, args)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _rss_mb()
    _release()
    after = _rss_mb()
    log.info("export job %s %s in %.1f s (CPU %.1f s; worker RSS %s MB at its end, %s MB released)", name,
             "done" if outcome["ok"] else "failed", seconds, cpu, f"{peak:.0f}" if peak else "?",
             f"{after:.0f}" if after else "?")
    if step and outcome["ok"]:
        log.info("export step %s done in %.1f s", name, seconds)
    elif step:
        log.info("export step %s failed in %.1f s: %s", name, seconds, outcome["error"])
    return {"outcome": outcome, "seconds": seconds, "cpu_seconds": cpu}


class WorkerJob:
    """A job queued on a worker: `wait()` returns its value or raises (as ChildJob does); `seconds` is the time
    it ran, not the time it queued."""

    def __init__(self, future, name: str):
        self._future, self.name, self.seconds = future, name, 0.0

    def wait(self) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        try:
            result = self._future.result()
        except BrokenProcessPool:
            raise ChildFailed(f"the export's TensorFlow process died while running {self.name} or before it "
                              "(killed: out of memory?)") from None
        self.seconds = result["seconds"]
        return _unwrap(result["outcome"])

    def cancel(self) -> None:
        self._future.cancel()


class Worker:
    """A spawned process that runs jobs in submission order (started at the first submit)."""

    def __init__(self, name: str = "tensorflow"):
        self.name = name
        self._pool = None
        self._queue = None
        self._relay: threading.Thread | None = None

    def submit(self, target: str | Callable, args: tuple, name: str, step: bool = False) -> WorkerJob:
        pool = self._ensure()
        return WorkerJob(pool.submit(_run, target, args, name, step), name)

    def call(self, target: str | Callable, args: tuple, name: str, step: bool = False) -> Any:
        return self.submit(target, args, name, step).wait()

    def _ensure(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is not None and getattr(self._pool, "_broken", False):
            self._shutdown(kill=True)  # a dead worker: the next job gets a fresh one
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # fork would copy this process and its threads
            self._queue = context.Queue()
            level = log.getEffectiveLevel()
            self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=(self._queue, level))
            self._relay = threading.Thread(target=_relay, args=(self._queue,), daemon=True,
                                           name=f"tumor-edge {self.name} log relay")
            self._relay.start()
        return self._pool

    def _shutdown(self, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):
                if process.is_alive():
                    process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if self._queue is not None:
            self._queue.put(None)
            if self._relay is not None:
                self._relay.join(timeout=10)
            self._queue.close()
        self._queue = self._relay = None

    def close(self, kill: bool = False) -> None:
        """End the worker (after its current job; `kill`: now). Idempotent."""
        self._shutdown(kill)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(kill=kind is not None)


def _relay(queue) -> None:
    """Parent side: hand each record the worker logged to this process's logger of the same name."""
    while True:
        try:
            record = queue.get()
        except (EOFError, OSError):
            return
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


class InlineWorker:
    """The same interface, every job run here and now (isolation off, or --debug: tracebacks kept)."""

    name = "inline"

    def submit(self, target: str | Callable, args: tuple, name: str, step: bool = False) -> _Done:
        if step:
            log.info("export step %s start", name)
        t0 = time.perf_counter()
        try:
            value = resolve(target)(*args)
        except BaseException:
            if step:
                log.info("export step %s failed in %.1f s", name, time.perf_counter() - t0)
            raise
        seconds = time.perf_counter() - t0
        if step:
            log.info("export step %s done in %.1f s", name, seconds)
        return _Done(value, seconds)

    def call(self, target: str | Callable, args: tuple, name: str, step: bool = False) -> Any:
        return self.submit(target, args, name, step).wait()

    def close(self, kill: bool = False) -> None:
        from tumor_edge.export.context import forget_models

        forget_models()

    def __enter__(self) -> InlineWorker:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close()


class _Done:
    def __init__(self, value: Any, seconds: float):
        self._value, self.seconds = value, seconds

    def wait(self) -> Any:
        return self._value

    def cancel(self) -> None:
        pass


def open_worker(isolate: bool) -> Worker | InlineWorker:
    return Worker() if isolate else InlineWorker()


__all__ = ["InlineWorker", "Worker", "WorkerJob", "open_worker"]
