"""Run one job in a process of its own, so everything it allocated goes back to the system when it ends.

Export runs its TensorFlow jobs (loading the model, tf2onnx, the TFLite converters, the Keras reference) in one
long-lived worker (export/worker.py, built on `_outcome`/`_unwrap` here) and each TensorFlow-free row made from
another row's file (ONNX fp16 and int8, onnxruntime's calibration holding big activation batches) in a
`ChildJob`: run one after another in one process they add up (0.1.0: 7.9 GB for a 96 px model, 8.7 GB at
299 px), and the parent stays free of TensorFlow (measured by benchmarks/export_memory.py).

Children are spawned, not forked (forking after TensorFlow has started its threads is unsafe). Arguments and
results travel pickled through files in the work folder. A child's exception comes back as itself when it
pickles (a TumorEdgeError keeps its type, message and the option it names), else as ChildFailed with its
first line; a child killed by the system (out of memory) is reported with its exit code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tumor_edge.errors import TumorEdgeError, first_line


class ChildFailed(RuntimeError):
    """A job failed in its child process; the message is the child's error line."""


def resolve(target: str | Callable) -> Callable:
    """The function a "module:function" string names, imported now, in the process that runs it (the export's jobs
    name the TensorFlow-side functions this way so the parent never imports their modules); a callable as is."""
    if callable(target):
        return target
    import importlib

    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr or "convert")


def _outcome(target: str | Callable, args: tuple) -> dict[str, Any]:
    """Run `target(*args)`; its value, or its error in a form that survives pickling."""
    try:
        return {"ok": True, "value": resolve(target)(*args)}
    except BaseException as err:  # noqa: BLE001 - everything is reported to the parent
        outcome = {"ok": False, "error": first_line(err), "type": type(err).__name__}
        if isinstance(err, TumorEdgeError):
            try:
                pickle.dumps(err)
                outcome["exception"] = err
            except Exception:  # noqa: BLE001 - an unpicklable attribute: the line is enough
                pass
        return outcome


def _unwrap(outcome: dict[str, Any]) -> Any:
    if outcome["ok"]:
        return outcome["value"]
    if outcome.get("exception") is not None:
        raise outcome["exception"]
    raise ChildFailed(outcome["error"])


def _child(target: str | Callable, args_file: str, result_file: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with open(args_file, "rb") as fh:
            args = pickle.load(fh)
    except BaseException as err:  # noqa: BLE001
        outcome = {"ok": False, "error": first_line(err), "type": type(err).__name__}
    else:
        started = time.perf_counter()
        outcome = _outcome(target, args)
        outcome["seconds"] = time.perf_counter() - started
    with open(result_file, "wb") as fh:
        pickle.dump(outcome, fh)


class ChildJob:
    """`target(*args)` running in a spawned process: `wait()` returns its value or raises."""

    def __init__(self, target: str | Callable, args: tuple, work: Path, name: str = "job"):
        import multiprocessing

        fd, self._args_file = tempfile.mkstemp(prefix="args-", suffix=".pkl", dir=work)
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(args, fh)
        self._result_file = self._args_file.replace("args-", "result-")
        context = multiprocessing.get_context("spawn")
        self.seconds: float | None = None
        self.process = context.Process(target=_child, args=(target, self._args_file, self._result_file),
                                       name=f"tumor-edge-export {name}", daemon=True)
        self.process.start()

    def wait(self) -> Any:
        self.process.join()
        try:
            with open(self._result_file, "rb") as fh:
                outcome = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError):
            code = self.process.exitcode
            why = " (killed: out of memory?)" if code is not None and code < 0 else ""
            outcome = {"ok": False, "error": f"process died with exit code {code}{why}"}
        finally:
            self._cleanup()
        self.seconds = outcome.get("seconds")  # the time it ran, not the time until someone waited for it
        return _unwrap(outcome)

    def cancel(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        for name in (self._args_file, self._result_file):
            Path(name).unlink(missing_ok=True)


class InlineJob:
    """The same interface, run here and now (isolation off, or --debug: the exception keeps its traceback)."""

    def __init__(self, target: str | Callable, args: tuple, work: Path | None = None, name: str = "job"):
        self._value = resolve(target)(*args)

    def wait(self) -> Any:
        return self._value

    def cancel(self) -> None:
        pass


def call(target: str | Callable, args: tuple, work: Path, isolate: bool = True, name: str = "job") -> Any:
    """`target(*args)` in a child process (isolate) or here; its value, or its exception."""
    return (ChildJob if isolate else InlineJob)(target, args, work, name).wait()


__all__ = ["ChildFailed", "ChildJob", "InlineJob", "call", "resolve"]
