"""Running work in another process, the one way export, training, the demo and the bench do it.

Why another process: TensorFlow keeps what it allocated until its process ends, fixes its thread pools when it
starts, and Keras fixes its backend when first imported. A child gives all of that back when it ends, and the
parent never imports TensorFlow. Children are spawned, never forked (forking a process whose threads run is
unsafe).

- `Worker`: one child that runs jobs in the order submitted and keeps its module state between them (the
  export's loaded model, the bench's Keras session). `run_elsewhere(fn, *args)`: one job in a child of its own.
- A job may have a deadline (seconds) and a worker a memory cap (resident MiB, Linux): past either, the child is
  killed and the job fails with a one-line `ChildFailed`; so does a child that dies (the system's out-of-memory
  killer). Jobs queued behind a dead child fail with it (they relied on its state); the next one submitted starts
  a fresh child.
- A job's exception comes back as the same class with a one-line message: a TumorEdgeError whole (its path, its
  option), another class rebuilt from its first line when the parent has its module loaded, else `ChildFailed`.
- The child's records on the `tumor_edge` loggers reach the parent's loggers of the same name when they happen;
  its stdout and stderr are the parent's, so progress lines pass through as printed.
- `Inline`: the same interface run here and now (isolation off, or --debug: the traceback is kept).

Functions and arguments travel pickled: a function must be importable by name, or be a "module:function" string
(imported only in the child, so a TensorFlow-side module never loads here). This module imports nothing of
TensorFlow and no part of tumor_edge but its errors.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from tumor_edge.errors import TumorEdgeError, first_line

log = logging.getLogger("tumor_edge.worker")
POLL_S = 0.05  # how often a running job's deadline and its worker's memory cap are checked

Target = str | Callable[..., Any]


class ChildFailed(TumorEdgeError):
    """A job that could not finish in its child (see the module's docstring)."""


def resolve(target: Target) -> Callable[..., Any]:
    """The function a "module:function" string names, imported in the process that runs it; a callable as is."""
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory of a process in MiB (this one by default); None where /proc is not there."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid or 'self'}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


# ------------------------------------------------------------------------------------------ the child's side


def _release() -> None:
    """Give back what the last job freed before the next starts: Python's cycles, then glibc's free lists
    (malloc keeps freed chunks for reuse; TensorFlow's threads fill many arenas)."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the collection is what can be done
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _error_fields(err: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {"line": first_line(err), "module": type(err).__module__,
                              "qualname": type(err).__qualname__, "plain": isinstance(err, Exception)}
    if isinstance(err, TumorEdgeError):
        with contextlib.suppress(Exception):  # an attribute that does not pickle: the class and line remain
            fields["exception"] = pickle.dumps(err)
    return fields


def _run_job(payload: bytes) -> bytes:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        target, args = pickle.loads(payload)
        outcome: dict[str, Any] = {"ok": True, "value": resolve(target)(*args)}
    except BaseException as err:  # noqa: BLE001 - everything is reported to the parent
        outcome = {"ok": False, **_error_fields(err)}
    outcome.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0, rss_mb=rss_mb())
    try:
        return pickle.dumps(outcome)
    except Exception as err:  # noqa: BLE001 - a value that does not pickle fails its job, not the child
        return pickle.dumps({"ok": False, "seconds": outcome["seconds"], "cpu_seconds": outcome["cpu_seconds"],
                             **_error_fields(ChildFailed(f"its result cannot be sent back ({first_line(err)})"))})


class _PipeHandler(logging.Handler):
    """Sends each record, formatted and stripped of what may not pickle, to the parent."""

    def __init__(self, send: Callable[[tuple], None]):
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            record = logging.makeLogRecord({**record.__dict__, "msg": message, "args": None, "exc_info": None,
                                            "exc_text": None, "stack_info": None})
            self._send(("log", record))
        except Exception:  # noqa: BLE001 - logging never fails the job
            self.handleError(record)


def _child_main(conn, env: Mapping[str, str], level: int) -> None:
    """The child's loop: a job, its outcome, memory given back; until the parent closes the pipe."""
    os.environ.update(env)  # before any job's module is imported (KERAS_BACKEND, TF_CPP_MIN_LOG_LEVEL)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    logger = logging.getLogger("tumor_edge")
    logger.handlers[:] = [_PipeHandler(send)]
    logger.setLevel(level)
    logger.propagate = False
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        result = _run_job(payload)
        sys.stdout.flush()
        sys.stderr.flush()
        _release()
        send(("done", result, rss_mb()))


# ----------------------------------------------------------------------------------------- the parent's side


def _rebuild(outcome: dict[str, Any]) -> BaseException:
    """The child's exception as its own class here, with its one line."""
    if "exception" in outcome:
        with contextlib.suppress(Exception):  # the class below still carries the line
            return pickle.loads(outcome["exception"])
    module = sys.modules.get(outcome["module"])  # never import a module (TensorFlow's) only to raise its error
    cls = getattr(module, outcome["qualname"], None) if module is not None and "." not in outcome["qualname"] else None
    if outcome["plain"] and isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):  # a constructor that wants more than a message
            return cls(outcome["line"])
    return ChildFailed(f"{outcome['qualname']}: {outcome['line']}")


def _forwarded_level() -> int:
    """The lowest level any of this process's `tumor_edge` loggers records: the child sends at least that."""
    loggers = [logger for name, logger in logging.root.manager.loggerDict.items()
               if name.startswith("tumor_edge") and isinstance(logger, logging.Logger)]
    return min([logging.getLogger("tumor_edge").getEffectiveLevel()] + [lg.getEffectiveLevel() for lg in loggers])


class Job:
    """A submitted job: `wait()` gives its value or raises its error. `seconds` and `cpu_seconds` are the time
    it ran in the child (not the time it queued); `rss_mb` the child's resident memory at its end, and
    `released_rss_mb` after the child gave back what the job freed."""

    def __init__(self, name: str, payload: bytes, deadline: float | None):
        self.name, self.payload, self.deadline = name, payload, deadline
        self.future: Future = Future()
        self.seconds = self.cpu_seconds = 0.0
        self.rss_mb: float | None = None
        self.released_rss_mb: float | None = None

    def wait(self) -> Any:
        return self.future.result()

    def cancel(self) -> None:
        self.future.cancel()


class _Runner:
    """What Worker and Inline share: `call` waits for the job `submit` queued; as a context manager, `close` at the
    end (`kill` when an exception leaves the block)."""

    def call(self, target: Target, *args: Any, name: str | None = None, deadline: float | None = None) -> Any:
        return self.submit(target, *args, name=name, deadline=deadline).wait()

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(kill=kind is not None)


class Worker(_Runner):
    """One spawned child running jobs in submission order (started at the first job, again after one dies).
    `env` is set in the child before any job runs."""

    def __init__(self, name: str = "worker", *, env: Mapping[str, str] | None = None, memory_mb: float | None = None):
        self.name, self.env, self.memory_mb = name, dict(env or {}), memory_mb
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._process = self._conn = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def submit(self, target: Target, *args: Any, name: str | None = None, deadline: float | None = None) -> Job:
        """Queue `target(*args)`; `deadline`: seconds it may run once started."""
        job = Job(name or getattr(target, "__name__", str(target)), pickle.dumps((target, args)), deadline)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._dispatch, daemon=True, name=f"tumor-edge {self.name}")
                self._thread.start()
            self._jobs.put(job)
        return job

    def close(self, kill: bool = False) -> None:
        """End the child after the jobs queued (`kill`: now, failing them). Idempotent."""
        if kill:
            self._kill(wait=False)
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()
        self._kill(wait=True)

    # -------------------------------------------------------------------------------- the dispatch thread

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not daemonic: a job may run work in a child of its own (the demo's export stage runs export, which runs
        # its converters in a TensorFlow worker), and a daemonic process may have none. `close` and `__exit__`
        # end the child.
        self._process = context.Process(target=_child_main, args=(child_conn, self.env, _forwarded_level()),
                                        daemon=False, name=f"tumor-edge {self.name}")
        self._process.start()
        child_conn.close()
        _end_at_exit(self)

    def _kill(self, wait: bool = False) -> None:
        """End the child: `wait`, let an idle one leave its loop (the pipe's close tells it); else kill it now."""
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        if conn is not None:
            conn.close()
        if process is not None and process.pid is not None:  # a process that never started has nothing to end
            if wait and process.is_alive():
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
            process.join()

    def _dispatch(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if self._process is None or not self._process.is_alive():
                    self._start()
                conn, process = self._conn, self._process
                conn.send_bytes(job.payload)
                self._await(job, conn, process)
            except ChildFailed as err:
                self._fail(job, err)
            except (EOFError, OSError, AttributeError):  # AttributeError: closed (killed) under this thread
                process = self._process
                if process is not None:
                    process.join(timeout=1)
                code = process.exitcode if process is not None else None
                why = ": killed, out of memory?" if code is not None and code < 0 else ""
                self._fail(job, ChildFailed(f"the {self.name} process died while running {job.name} (exit code "
                                            f"{code}{why})"))
            except Exception as err:  # noqa: BLE001 - a child that cannot start; a result this process cannot load
                self._fail(job, ChildFailed(f"{job.name} failed in the {self.name} process: {first_line(err)}"))

    def _fail(self, job: Job, err: ChildFailed) -> None:
        self._kill()
        if not job.future.done():
            job.future.set_exception(err)
        pending: list[Job | None] = []  # jobs queued behind it relied on its state: they fail with it
        while not self._jobs.empty():
            pending.append(self._jobs.get_nowait())
        for queued in pending:
            if queued is None:
                self._jobs.put(None)
            elif queued.future.set_running_or_notify_cancel():
                queued.future.set_exception(ChildFailed(f"{queued.name} not run: {err}"))

    def _await(self, job: Job, conn, process) -> None:
        started = time.monotonic()
        while True:
            if conn.poll(POLL_S):
                message = conn.recv()
                if message[0] == "log":
                    logging.getLogger(message[1].name).handle(message[1])
                    continue
                outcome = pickle.loads(message[1])
                job.seconds, job.cpu_seconds = outcome["seconds"], outcome["cpu_seconds"]
                job.rss_mb, job.released_rss_mb = outcome.get("rss_mb"), message[2]
                if outcome["ok"]:
                    job.future.set_result(outcome["value"])
                else:
                    job.future.set_exception(_rebuild(outcome))
                return
            if not process.is_alive():
                raise EOFError
            if job.deadline is not None and time.monotonic() - started > job.deadline:
                raise ChildFailed(f"{job.name} ran past its deadline of {job.deadline:g} s and was stopped")
            if self.memory_mb is not None and (rss := rss_mb(process.pid) or 0.0) > self.memory_mb:
                raise ChildFailed(f"{job.name} went past the memory cap of {self.memory_mb:g} MiB "
                                  f"({rss:.0f} MiB resident) and was stopped")


class Inline(_Runner):
    """The Worker's interface, each job run here when submitted (no deadline, no cap)."""

    name = "inline"

    def submit(self, target: Target, *args: Any, name: str | None = None, deadline: float | None = None) -> Job:
        job = Job(name or getattr(target, "__name__", str(target)), b"", deadline)
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            job.future.set_result(resolve(target)(*args))
        except Exception as err:
            job.future.set_exception(err)
        job.seconds, job.cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        return job

    def close(self, kill: bool = False) -> None:
        pass


_LIVE: weakref.WeakSet = weakref.WeakSet()


def _end_at_exit(worker: Worker) -> None:
    """A worker left open ends with the interpreter: its child is not daemonic, and multiprocessing would wait for
    it at exit while the child waits on the pipe. Registered after multiprocessing's own exit handler, so it runs
    first (atexit runs last-registered first)."""
    if not _LIVE:
        import atexit

        atexit.unregister(_end_all)
        atexit.register(_end_all)
    _LIVE.add(worker)


def _end_all() -> None:
    for worker in list(_LIVE):
        worker._kill()


def run_elsewhere(target: Target, *args: Any, name: str | None = None, deadline: float | None = None,
                  memory_mb: float | None = None, env: Mapping[str, str] | None = None) -> Any:
    """`target(*args)` in a spawned child of its own, which ends with it; its value, or its error."""
    with Worker(name or getattr(target, "__name__", str(target)), env=env, memory_mb=memory_mb) as worker:
        return worker.call(target, *args, name=name, deadline=deadline)
