"""The Keras reference in a worker process of its own (tumor_edge.worker), one per thread count.

TensorFlow fixes its thread pools when it starts, so each thread count needs a fresh process; that also keeps
TensorFlow out of the harness, which times the runtime. The model runs through a `tf.function` (graph mode, what
`predict` uses), never eagerly, on the same preprocessed batches the runtime formats get; the worker times each
call itself (perf_counter_ns around the call and the copy of its result), so passing the job is not counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tumor_edge.errors import first_line
from tumor_edge.worker import Worker

# In the worker: the loaded model, its traced forward pass, the inputs and the batches of the last `prepare`.
_SESSION: dict[str, Any] = {}


def _load(model: str, inputs: str, threads: int) -> float:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    start = time.perf_counter()
    loaded = keras.models.load_model(model, compile=False)
    pixels = np.load(inputs)
    _SESSION["inputs"] = pixels
    _SESSION["forward"] = tf.function(lambda x: loaded(x, training=False),
                                      input_signature=[tf.TensorSpec((None, *pixels.shape[1:]), tf.float32)],
                                      reduce_retracing=True)
    return time.perf_counter() - start


def _prepare(batch: int) -> list[int]:
    from tumor_edge.bench.inputs import make_batches

    _SESSION["batches"] = make_batches(_SESSION["inputs"], batch)
    return list(_SESSION["forward"](_SESSION["batches"][0]).numpy().shape)  # traces once, checks the output


def _run(i: int) -> float:
    batches = _SESSION["batches"]
    x = batches[i % len(batches)]
    t0 = time.perf_counter_ns()
    _SESSION["forward"](x).numpy()
    return (time.perf_counter_ns() - t0) / 1e9


class KerasSession:
    """The harness side: `model` (.keras) on `inputs` (.npy of float32 (N, H, W, 3) in the model's input scale)
    with `threads` intra-op threads. A worker that fails to start or load is a RuntimeError naming the model."""

    def __init__(self, model: str | Path, inputs: str | Path, threads: int):
        self.model = str(model)
        self.worker = Worker(f"keras reference ({threads} threads)", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            self.load_s = float(self.worker.call(_load, self.model, str(inputs), threads, name="load"))
        except Exception as err:
            self.worker.close(kill=True)
            raise RuntimeError(f"Keras reference worker for {self.model} stopped: {first_line(err)}") from None

    def prepare(self, batch: int) -> tuple[int, ...]:
        return tuple(self.worker.call(_prepare, batch, name="prepare"))

    def timed_call(self, i: int) -> float:
        return float(self.worker.call(_run, i, name="run"))

    def close(self) -> None:
        self.worker.close()
