"""Run one converter in a process of its own, so everything it allocated goes back to the system when it ends.

Why: TensorFlow keeps what tf2onnx's graph tracing, the SavedModel export and each TFLiteConverter allocate
(graphs, MLIR modules, grappler copies of the weights) until the process exits, and onnxruntime's calibration
holds big activation batches; run one after another in one process they add up (0.1.0: 7.9 GB for a 96 px
model). In children, the export's peak is the parent plus the largest converter instead of the sum of all
(measured by benchmarks/export_memory.py).

Children are spawned, not forked (forking after TensorFlow has started its threads is unsafe), and get the
pickled `ExportContext`; they load the model themselves. A child's exception comes back as its first line; a
child killed by the system (out of memory) is reported with its exit code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from tumor_edge.errors import first_line


class ConverterFailed(RuntimeError):
    """A converter failed in its child process; the message is the child's error line."""


def resolve(target: str):
    """The function a format table's "module:function" string names, imported now (not when the table is)."""
    import importlib

    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr or "convert")


def _child(target: str, ctx_file: str, dst: str, result_file: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with open(ctx_file, "rb") as fh:
            ctx = pickle.load(fh)
        outcome: dict[str, Any] = {"ok": True, "facts": resolve(target)(ctx, Path(dst))}
    except BaseException as err:  # noqa: BLE001 - everything is reported to the parent as the step's failure
        outcome = {"ok": False, "error": first_line(err), "type": type(err).__name__}
    with open(result_file, "wb") as fh:
        pickle.dump(outcome, fh)


class ChildJob:
    """A converter running in a spawned process: `wait()` returns its facts or raises ConverterFailed."""

    def __init__(self, target: str, ctx, dst: Path):
        import multiprocessing

        fd, self._ctx_file = tempfile.mkstemp(prefix="ctx-", suffix=".pkl", dir=ctx.work)
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(ctx, fh)
        self._result_file = self._ctx_file.replace("ctx-", "result-")
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_child, args=(target, self._ctx_file, str(dst), self._result_file),
                                       name=f"tumor-edge-export {Path(dst).name}", daemon=True)
        self.process.start()

    def wait(self) -> dict[str, Any]:
        self.process.join()
        try:
            with open(self._result_file, "rb") as fh:
                outcome = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError):
            code = self.process.exitcode
            why = " (killed: out of memory?)" if code is not None and code < 0 else ""
            outcome = {"ok": False, "error": f"converter process died with exit code {code}{why}"}
        finally:
            self._cleanup()
        if not outcome["ok"]:
            raise ConverterFailed(outcome["error"])
        return outcome["facts"]

    def cancel(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        for name in (self._ctx_file, self._result_file):
            Path(name).unlink(missing_ok=True)


class InlineJob:
    """The same interface, run here and now (isolation off, or --debug: the exception keeps its traceback)."""

    def __init__(self, target: str, ctx, dst: Path):
        self._facts = resolve(target)(ctx, Path(dst))

    def wait(self) -> dict[str, Any]:
        return self._facts

    def cancel(self) -> None:
        pass


__all__ = ["ChildJob", "ConverterFailed", "InlineJob", "resolve"]
