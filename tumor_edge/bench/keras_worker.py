"""The Keras reference, timed in its own process: `python -m tumor_edge.bench.keras_worker SPEC.json`.

TensorFlow fixes its thread pools when it starts, so each thread count needs a fresh process; that also keeps
TensorFlow out of the harness, which times the runtime. The model runs through a `tf.function` (graph mode,
what `predict` uses), never eagerly, on the same preprocessed batches the runtime formats get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tumor_edge.bench.inputs import make_batches
from tumor_edge.bench.timing import RunPlan, measure


@dataclass
class KerasSpec:
    model: str
    inputs: str  # .npy of float32 (N, H, W, 3) in the model's input scale
    threads: int
    batches: list[int]
    warmup: int
    min_runs: int
    min_seconds: float
    output: str  # where the worker writes its JSON result


def run_keras_reference(spec: KerasSpec, timeout: float = 3600.0) -> dict:
    """Spawn the worker and return {"load_s", "timings": {batch: [seconds]}, "output_shape"}."""
    spec_path = Path(spec.output).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(asdict(spec)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "tumor_edge.bench.keras_worker", str(spec_path)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not Path(spec.output).is_file():
        tail = proc.stderr.strip().splitlines()
        raise RuntimeError(f"Keras reference failed on {spec.model}: {tail[-1] if tail else proc.returncode}")
    data = json.loads(Path(spec.output).read_text())
    data["timings"] = {int(k): v for k, v in data["timings"].items()}
    return data


def main(argv: list[str] | None = None) -> None:
    spec = KerasSpec(**json.loads(Path((argv or sys.argv[1:])[0]).read_text()))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    start = time.perf_counter()
    model = keras.models.load_model(spec.model, compile=False)
    load_s = time.perf_counter() - start
    inputs = np.load(spec.inputs)
    shape = (None, *inputs.shape[1:])
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=True)
    plan = RunPlan(spec.warmup, spec.min_runs, spec.min_seconds)
    timings: dict[int, list[float]] = {}
    output_shape: list[int] = []
    for b in spec.batches:
        batches = make_batches(inputs, b)
        output_shape = list(forward(batches[0]).numpy().shape)  # traces once, checks the output
        timings[b] = measure(lambda i, bs=batches: forward(bs[i % len(bs)]).numpy(), plan)
    Path(spec.output).write_text(json.dumps({"load_s": load_s, "timings": timings,
                                             "output_shape": output_shape}))


if __name__ == "__main__":
    main()
