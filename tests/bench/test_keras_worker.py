"""The bench's Keras reference runs in a worker process of its own (tumor_edge.worker): it loads the model with
the thread count asked, traces once per batch size and checks the output, times calls there, and a model it
cannot load is one RuntimeError line naming it (the harness then leaves the row out)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tumor_edge.bench.targets import KERAS_KEY, KerasReferenceSession, Target
from tumor_edge.errors import ModelError

pytestmark = pytest.mark.slow  # one TensorFlow start


def _session(path, tmp_path, classes: int = 4) -> KerasReferenceSession:
    target = Target(KERAS_KEY, path, KERAS_KEY, "fp32")
    return KerasReferenceSession(target, 1, np.zeros((5, 8, 8, 3), np.float32), classes, tmp_path)


def test_the_keras_reference_loads_prepares_and_times_in_its_own_process(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "m.keras")
    session = _session(tmp_path / "m.keras", tmp_path)
    try:
        assert session.worker.pid not in (None, os.getpid())
        assert session.load_s > 0 and session.loaded_file == "m.keras"
        session.prepare(3)
        assert all(session.timed_call(i) > 0 for i in range(3))
    finally:
        session.close()
    assert session.worker.pid is None
    wrong = _session(tmp_path / "m.keras", tmp_path, classes=2)
    try:
        with pytest.raises(ModelError, match=r"unexpected output \(3, 4\)"):
            wrong.prepare(3)
    finally:
        wrong.close()


def test_a_model_the_worker_cannot_load_is_one_runtime_error_line(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match=r"^Keras reference worker for .*broken.keras stopped: [^\n]+$"):
        _session(tmp_path / "broken.keras", tmp_path)
