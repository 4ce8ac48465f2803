"""The export's TensorFlow worker (export/worker.py): one long-lived process that runs jobs in order, keeps what
a job loaded for the next, returns values and typed errors, survives its own death, and logs through the parent.
Plain Python jobs (no TensorFlow): each test costs one interpreter start."""

from __future__ import annotations

import logging
import os

import pytest

from tumor_edge.errors import ModelError
from tumor_edge.export.isolate import ChildFailed
from tumor_edge.export.worker import InlineWorker, Worker

_STATE: dict[str, int] = {}


def remember(key: str, value: int) -> int:
    """A job that keeps something in its process, as the worker keeps the loaded model."""
    _STATE[key] = value
    return os.getpid()


def recall(key: str) -> tuple[int, int | None]:
    return os.getpid(), _STATE.get(key)


def fail_typed(path: str) -> None:
    raise ModelError("this model cannot be converted", path)


def fail_untyped() -> None:
    raise ZeroDivisionError("division by zero\nsecond line")


def die() -> None:
    os._exit(9)  # as the kernel's out-of-memory killer would end it


def say(message: str) -> int:
    logging.getLogger("tumor_edge.export").info(message)
    return 1


def test_jobs_share_one_process_that_keeps_state():
    with Worker() as worker:
        first = worker.submit(remember, ("model", 42), "remember")
        second = worker.submit(recall, ("model",), "recall")  # queued before the first finished
        pid = first.wait()
        assert second.wait() == (pid, 42)
        assert pid != os.getpid()
        assert first.seconds >= 0.0


def test_errors_come_back_typed_or_as_one_line_and_the_worker_goes_on():
    with Worker() as worker:
        with pytest.raises(ModelError, match="cannot be converted") as typed:
            worker.call(fail_typed, ("/models/x.keras",), "typed")
        assert str(typed.value.path) == "/models/x.keras"
        with pytest.raises(ChildFailed) as untyped:
            worker.call(fail_untyped, (), "untyped")
        assert str(untyped.value) == "division by zero"
        worker.call(remember, ("after", 1), "remember")  # the same worker still runs jobs
        assert worker.call(recall, ("after",), "recall")[1] == 1


def test_a_dead_worker_fails_its_job_in_one_line_and_the_next_job_gets_a_fresh_one():
    with Worker() as worker:
        before = worker.call(remember, ("x", 1), "remember")
        with pytest.raises(ChildFailed, match="died while running die.*out of memory"):
            worker.call(die, (), "die")
        pid, kept = worker.call(recall, ("x",), "recall")
        assert pid != before and kept is None  # a fresh process: what the dead one held is gone


def test_worker_logs_reach_the_parent_logger(caplog):
    with caplog.at_level(logging.INFO, logger="tumor_edge.export"), Worker() as worker:
        worker.call(say, ("hello from the worker",), "say", step=True)
    messages = [r.getMessage() for r in caplog.records]
    assert "hello from the worker" in messages
    assert "export step say start" in messages and any(m.startswith("export step say done in") for m in messages)
    assert any(m.startswith("export job say done in") and "CPU" in m for m in messages)


def test_inline_worker_runs_here():
    worker = InlineWorker()
    assert worker.call(remember, ("inline", 7), "remember") == os.getpid()
    with pytest.raises(ModelError):
        worker.call(fail_typed, ("/x",), "typed")


# ------------------------------------------------------------------ the export's process layout (one TF start)


def pid_probe(ctx, dst) -> dict:
    """A converter from the Keras model: writes a real ONNX file by hand, says which process it ran in."""
    import sys

    from tests.export.hand_format import convert

    convert(ctx, dst)
    return {"pid": os.getpid(), "model_id": id(ctx.model), "tensorflow": "tensorflow" in sys.modules}


def derived_probe(ctx, dst) -> dict:
    """A converter from another row's file (as ONNX int8 from fp32): no TensorFlow needed or imported."""
    import shutil
    import sys

    shutil.copyfile(ctx.needs_ok("onnx-a"), dst)
    return {"pid": os.getpid(), "tensorflow": "tensorflow" in sys.modules}


@pytest.mark.slow
def test_export_loads_tensorflow_once_and_keeps_it_out_of_derived_rows(tmp_path, monkeypatch):
    """Every row converted from the Keras model runs in the one worker, on the model it loaded once; a row made
    from another row's file runs in a TensorFlow-free child of its own. (One export, the default options: one
    TensorFlow start, ~20-40 s on a busy 2-core machine.)"""
    import keras
    import numpy as np

    from tumor_edge.contracts import formats
    from tumor_edge.contracts.formats import ModelFormat
    from tumor_edge.export.config import ExportConfig
    from tumor_edge.export.exporter import export_bundle
    from tumor_edge.export.formats import CONVERTERS

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights([np.random.default_rng(0).normal(0, 8, (3, 4)), np.zeros(4)])
    model.save(tmp_path / "m.keras")
    rows = (ModelFormat("onnx-a", "onnx", "fp32", "model_a.onnx", "onnxruntime"),
            ModelFormat("onnx-b", "onnx", "fp16", "model_b.onnx", "onnxruntime"),
            ModelFormat("onnx-c", "onnx", "int8", "model_c.onnx", "onnxruntime", needs="onnx-a"))
    for key, function in (("onnx-a", pid_probe), ("onnx-b", pid_probe), ("onnx-c", derived_probe)):
        monkeypatch.setitem(CONVERTERS, key, function)
    monkeypatch.setattr(formats, "FORMATS", rows)
    result = export_bundle(ExportConfig(source=tmp_path / "m.keras", out=tmp_path / "bundle", classes=list("abcd"),
                                        preprocess="unit", parity=False, show_progress=False))
    a, b, c = (row.extra for row in result.files)
    assert all(row.ok for row in result.files), [row.status for row in result.files]
    assert a["pid"] == b["pid"] != os.getpid(), "both Keras rows in the one worker"
    assert a["model_id"] == b["model_id"], "the model was loaded once, not per row"
    assert a["tensorflow"] and not c["tensorflow"]
    assert c["pid"] not in (os.getpid(), a["pid"])
