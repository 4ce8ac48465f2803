"""The bench's processes of their own: the cold-start probe, and the Keras reference's worker. TensorFlow loads
only inside them, never at import.

Cold start: a fresh process, from spawn to its first result for one image file, and that process's peak memory.
A launcher (`--launch`) spawns the probe, times spawn to the probe's first stdout line and reads peak RSS from
the kernel's accounting of the reaped probe (`os.wait4`), so the probe measures nothing itself. A `.keras`
file needs `--bundle` for its preprocessing.

The Keras reference (bench.targets.KerasReferenceSession runs `_load`, `_prepare` and `_run` in its worker) runs
through a `tf.function` (graph mode, what `predict` uses), never eagerly, on the same preprocessed batches the
runtime formats get; the worker times each call itself (perf_counter_ns around the call and the copy of its
result), so passing the job is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _child_command(model: Path, image: Path, threads: int | None, bundle: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "tumor_edge.bench.coldstart", str(model), str(image)]
    if threads:
        cmd += ["--threads", str(threads)]
    if bundle:
        cmd += ["--bundle", str(bundle)]
    return cmd


def _spawn_once(model: Path, image: Path, threads: int | None, bundle: Path | None) -> dict[str, Any]:
    """The launcher's record of one fresh process (`_launch`). A bare launcher spawns it: Linux carries the
    spawner's RSS high-water mark into the child's ru_maxrss across fork + exec, so a child of the large harness
    would report the harness's memory."""
    cmd = [*_child_command(model, image, threads, bundle), "--launch"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")  # the launcher's probe inherits it
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600.0, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()
        raise RuntimeError(f"cold start failed on {model} (exit {proc.returncode}): "
                           f"{tail[-1] if tail else 'no output'}")
    return json.loads(lines[-1])


def _launch(cmd: list[str]) -> dict[str, Any]:
    """Spawn `cmd`, time spawn -> first stdout line, reap it with wait4 for its peak RSS."""
    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        first_result = time.perf_counter() - start
        proc.stdout.read()
        proc.stdout.close()
        if not hasattr(os, "wait4"):  # Windows: no kernel accounting of the child to read
            proc.wait(timeout=600.0)
            status, rusage = None, None
        else:
            deadline = time.monotonic() + 600.0
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, rusage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.005)
        if status is not None:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
        if proc.returncode != 0 or not line.strip():
            err_file.seek(0)
            tail = err_file.read().decode(errors="replace").strip().splitlines()
            sys.stderr.write((tail[-1] if tail else f"exit {proc.returncode}, no output") + "\n")
            raise SystemExit(1)
    rss_unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: kilobytes on Linux, bytes on macOS
    return {"first_result_s": first_result, "peak_rss_mb": rusage.ru_maxrss / rss_unit if rusage else None,
            "cpu_s": rusage.ru_utime + rusage.ru_stime if rusage else None, "child": json.loads(line)}


def measure_cold_start(key: str, model: Path, image: Path, runs: int = 3, threads: int | None = None,
                       bundle: Path | None = None) -> dict[str, Any]:
    """Cold-start figures of one model file over `runs` fresh processes (the first also warms the file cache, as
    on a device after boot): seconds from spawn to first result, the median of the probes' ru_maxrss (None where
    the OS has no wait4), their median user+sys CPU seconds (load inflates wall time far more, so compare this
    across a shared machine's runs), and the child's own split of the median run."""
    samples = [_spawn_once(model, image, threads, bundle) for _ in range(max(1, runs))]
    times = [s["first_result_s"] for s in samples]
    rss = sorted(s["peak_rss_mb"] for s in samples if s["peak_rss_mb"] is not None)
    cpu = [s["cpu_s"] for s in samples if s.get("cpu_s") is not None]
    median_index = sorted(range(len(times)), key=times.__getitem__)[len(times) // 2]
    return {"format": key, "file": Path(model).name, "runs": len(samples), "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "peak_rss_mb": rss[len(rss) // 2] if rss else None,
            "cpu_s": statistics.median(cpu) if cpu else None,
            "child": samples[median_index]["child"].get("timing", {})}


# ---- the child ---------------------------------------------------------------------------------------------


def _classify_runtime(model: Path, image: Path, threads: int | None) -> tuple[str, dict[str, float]]:
    t0 = time.perf_counter()
    from tumor_edge.runtime import BackendOptions, Classifier

    t1 = time.perf_counter()
    clf = Classifier.from_bundle(model, options=BackendOptions(threads=threads))
    t2 = time.perf_counter()
    label = clf.predict(image).label
    t3 = time.perf_counter()
    return label, {"import_s": t1 - t0, "load_s": t2 - t1, "first_inference_s": t3 - t2}


def _classify_keras(model: Path, image: Path, threads: int | None, bundle: Path | None) -> tuple[str, dict]:
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.runtime import preprocess_image

    if bundle is None:
        raise SystemExit("a .keras model needs --bundle for its preprocessing and classes")
    meta = BundleMetadata.read(bundle)
    t0 = time.perf_counter()
    _, keras = _tensorflow(threads)
    t1 = time.perf_counter()
    net = keras.models.load_model(model, compile=False)
    t2 = time.perf_counter()
    probs = net.predict_on_batch(preprocess_image(image, meta.preprocessing)[None])
    label = meta.classes[int(probs[0].argmax())]
    t3 = time.perf_counter()
    return label, {"import_s": t1 - t0, "load_s": t2 - t1, "first_inference_s": t3 - t2}


def _tensorflow(threads: int | None):
    """(tensorflow, keras), TensorFlow's pools sized first: it fixes them when it starts."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    return tf, keras


# ---- the Keras reference's worker ---------------------------------------------------------------------------

# In the worker: the loaded model, its traced forward pass, the inputs and the batches of the last `prepare`.
_SESSION: dict[str, Any] = {}


def _load(model: str, inputs: str, threads: int) -> float:
    import numpy as np

    tf, keras = _tensorflow(threads)
    start = time.perf_counter()
    loaded = keras.models.load_model(model, compile=False)
    pixels = np.load(inputs)
    _SESSION["inputs"] = pixels
    _SESSION["forward"] = tf.function(lambda x: loaded(x, training=False),
                                      input_signature=[tf.TensorSpec((None, *pixels.shape[1:]), tf.float32)],
                                      reduce_retracing=True)
    return time.perf_counter() - start


def _prepare(batch: int) -> list[int]:
    from tumor_edge.bench.targets import make_batches

    _SESSION["batches"] = make_batches(_SESSION["inputs"], batch)
    return list(_SESSION["forward"](_SESSION["batches"][0]).numpy().shape)  # traces once, checks the output


def _run(i: int) -> float:
    batches = _SESSION["batches"]
    x = batches[i % len(batches)]
    t0 = time.perf_counter_ns()
    _SESSION["forward"](x).numpy()
    return (time.perf_counter_ns() - t0) / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="classify one image in a fresh process (cold-start probe)")
    parser.add_argument("model", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (for a .keras model)")
    parser.add_argument("--launch", action="store_true",
                        help="act as the launcher: spawn the probe, print its timing and peak RSS as JSON")
    args = parser.parse_args(argv)
    if args.launch:
        print(json.dumps(_launch(_child_command(args.model, args.image, args.threads, args.bundle))), flush=True)
        return
    if args.model.suffix == ".keras":
        label, timing = _classify_keras(args.model, args.image, args.threads, args.bundle)
    else:
        label, timing = _classify_runtime(args.model, args.image, args.threads)
    print(json.dumps({"label": label, "timing": timing}), flush=True)


if __name__ == "__main__":
    main()
