"""The bench's Keras reference runs in a worker process of its own (tumor_edge.worker): it loads the model with
the thread count asked, traces once per batch size, times calls there, and a model it cannot load is one
RuntimeError line naming it (the harness then leaves the row out)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tumor_edge.bench.keras_worker import KerasSession

pytestmark = pytest.mark.slow  # one TensorFlow start


def test_the_keras_reference_loads_prepares_and_times_in_its_own_process(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 8, 3), np.float32))
    session = KerasSession(tmp_path / "m.keras", tmp_path / "x.npy", threads=1)
    try:
        assert session.worker.pid not in (None, os.getpid())
        assert session.load_s > 0
        assert session.prepare(3) == (3, 4)
        assert all(session.timed_call(i) > 0 for i in range(3))
    finally:
        session.close()
    assert session.worker.pid is None


def test_a_model_the_worker_cannot_load_is_one_runtime_error_line(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(RuntimeError, match=r"^Keras reference worker for .*broken.keras stopped: [^\n]+$"):
        KerasSession(tmp_path / "broken.keras", tmp_path / "x.npy", threads=1)
