"""The Keras reference's side of its worker process (bench.targets.KerasReferenceSession starts it by name, so this
module and TensorFlow never load in the harness).

The model runs through a `tf.function` (graph mode, what `predict` uses), never eagerly, on the same preprocessed
batches the runtime formats get; the worker times each call itself (perf_counter_ns around the call and the copy
of its result), so passing the job is not counted.
"""

from __future__ import annotations

import time
from typing import Any

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
