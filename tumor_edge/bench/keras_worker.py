"""The Keras reference in its own process, driven run by run: `python -m tumor_edge.bench.keras_worker SPEC`.

TensorFlow fixes its thread pools when it starts, so each thread count needs a fresh process; that also keeps
TensorFlow out of the harness, which times the runtime. The harness sends one command a line on stdin and
reads one JSON reply a line on stdout, so Keras runs interleave with the runtime formats like any other format.
The model runs through a `tf.function` (graph mode, what `predict` uses), never eagerly, on the same
preprocessed batches the runtime formats get; the worker times each call itself (perf_counter_ns around the
call and the copy of its result), so the pipe's latency is not counted.

Protocol: worker -> {"ready": load_s}; "prepare B" -> {"output_shape": [...]}; "run I" -> {"seconds": s};
"quit" -> exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.bench.inputs import make_batches


@dataclass
class KerasSpec:
    model: str
    inputs: str  # .npy of float32 (N, H, W, 3) in the model's input scale
    threads: int


class KerasSession:
    """The harness side: a running worker that answers one command at a time."""

    def __init__(self, spec: KerasSpec, workdir: Path):
        spec_path = workdir / f"keras-{spec.threads}.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        self._stderr = open(workdir / f"keras-{spec.threads}.log", "w+")  # noqa: SIM115 (closed in close())
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen([sys.executable, "-m", "tumor_edge.bench.keras_worker", str(spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                     text=True, bufsize=1)
        self.model = spec.model
        self.load_s = float(self._reply()["ready"])

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.seek(0)
            tail = [t for t in self._stderr.read().strip().splitlines() if t.strip()]
            raise RuntimeError(f"Keras reference worker for {self.model} stopped (exit {self.proc.returncode}): "
                               f"{tail[-1] if tail else 'no message'}")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the reply read reports why the worker is gone
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def serve(spec: KerasSpec, commands, reply) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    start = time.perf_counter()
    model = keras.models.load_model(spec.model, compile=False)
    inputs = np.load(spec.inputs)
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((None, *inputs.shape[1:]), tf.float32)],
                          reduce_retracing=True)
    reply({"ready": time.perf_counter() - start})
    batches: list[np.ndarray] = []
    clock = time.perf_counter_ns
    for line in commands:
        command, _, arg = line.strip().partition(" ")
        if command == "prepare":
            batches = make_batches(inputs, int(arg))
            reply({"output_shape": list(forward(batches[0]).numpy().shape)})  # traces once, checks the output
        elif command == "run":
            x = batches[int(arg) % len(batches)]
            t0 = clock()
            forward(x).numpy()
            reply({"seconds": (clock() - t0) / 1e9})
        elif command == "quit":
            return
        else:
            raise SystemExit(f"unknown command {line.strip()!r}")


def main(argv: list[str] | None = None) -> None:
    spec = KerasSpec(**json.loads(Path((argv or sys.argv[1:])[0]).read_text()))
    # The protocol gets a private copy of stdout; anything TensorFlow or Keras prints goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def reply(data: dict) -> None:
        protocol.write(json.dumps(data) + "\n")
        protocol.flush()

    serve(spec, sys.stdin, reply)


if __name__ == "__main__":
    main()
