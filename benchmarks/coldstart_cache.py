#!/usr/bin/env python
"""Cold start of the device runtime with the on-device optimised-model cache (issue 13) and the model hash check
(issue 11): a fresh process from spawn to its first result for one image, and that process's peak RSS.

    python benchmarks/coldstart_cache.py --workdir /tmp/coldstart     # builds the model once, then measures

The model is the project's architecture at the standard size: a random-weight 299x299 InceptionV3 (4 classes,
Keras, `weights=None`) converted with tf2onnx and quantized to int8 QDQ with onnxruntime's `quantize_static` on a
few random images (latency and memory do not depend on the weights' values). It is built once with TensorFlow and
kept under --workdir as a bundle; the runtime that is measured never imports TensorFlow.

Cases, each a fresh `python` process (median of --runs; each run gets a cache in the state the case names):
  no-cache          TUMOR_EDGE_NO_CACHE=1: the plain model, optimised at every load (0.1.0 without twins)
  first             empty cache: optimise, write the cache entry, classify
  second            the entry written by a previous run: load it with graph optimisation off
  twin              0.1.0's way, for the ratio: a bundle carrying a pre-optimised `model_int8.ort.onnx` (cache off)
and each with the sha256 check of the model file on (the default) and off (`check_integrity=False`).
Peak RSS is the reaped child's ru_maxrss (the kernel's accounting), so it includes the interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SIZE = 299
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
MODEL = "model_int8.onnx"

# What the measured process runs: the public API, one image file, one result printed.
CHILD = """
import json, sys, time
t0 = float(sys.argv[3])
t_start = time.time()
from tumor_edge.runtime.backends import BackendOptions
from tumor_edge.runtime.classifier import Classifier
t_import = time.time()
clf = Classifier.from_bundle(sys.argv[1], options=BackendOptions(verify_hashes=sys.argv[4] == "1"))
t_load = time.time()
result = clf.predict(sys.argv[2])
t_end = time.time()
print(json.dumps({"label": result.label, "kind": clf.backend.source_kind, "total": t_end - t0,
                  "startup": t_start - t0, "imports": t_import - t_start, "load": t_load - t_import,
                  "predict": t_end - t_load}), flush=True)
"""


def build_bundle(workdir: Path) -> Path:
    """The int8 bundle (built once with TensorFlow, tf2onnx and onnxruntime's quantizer; then reused)."""
    bundle = workdir / "bundle-int8-299"
    if (bundle / MODEL).is_file() and (bundle / "metadata.json").is_file():
        return bundle
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tumor_edge.contracts.bundle import BundleMetadata, describe_file
    from tumor_edge.contracts.preprocessing import Preprocessing

    work = workdir / "build"
    work.mkdir(parents=True, exist_ok=True)
    fp32, pre = work / "model_fp32.onnx", work / "model_pre.onnx"
    if not fp32.is_file():
        keras.utils.set_random_seed(0)
        model = keras.applications.InceptionV3(weights=None, classes=4, input_shape=(SIZE, SIZE, 3))
        spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(fp32))
    if not pre.is_file():
        quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.Generator(np.random.PCG64(0))
            self.items = iter([{"image": rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    bundle.mkdir(parents=True, exist_ok=True)
    quantize_static(str(pre), str(bundle / MODEL), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False)
    meta = BundleMetadata(list(CLASSES), Preprocessing(SIZE, SIZE, scaling="symmetric"))
    meta.models = {MODEL: describe_file(bundle / MODEL, "onnx", "int8")}
    meta.write(bundle)
    return bundle


def scan_image(workdir: Path) -> Path:
    """One 512x512 JPEG slice (the runtime's own synthetic brain-like generator; no patient data)."""
    path = workdir / "scan.jpg"
    if not path.is_file():
        from PIL import Image

        from tumor_edge.runtime.reference import brain_blobs

        Image.fromarray(brain_blobs(7, 1, 512, 512)[0]).save(path, quality=92)
    return path


def one_run(bundle: Path, image: Path, env: dict[str, str], check_hash: bool) -> dict:
    """A fresh interpreter from spawn to its first result; its peak RSS from the kernel's accounting of the
    reaped child (os.wait4). This parent stays small (no TensorFlow), so no inherited high-water mark."""
    with tempfile.TemporaryFile() as errors:
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle), str(image), repr(t0),
                                 "1" if check_hash else "0"], stdout=subprocess.PIPE, stderr=errors, env=env,
                                cwd=ROOT)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            errors.seek(0)
            raise SystemExit(f"child failed: {errors.read().decode()[-2000:]}")
    record = json.loads(out.decode().strip().splitlines()[-1])
    record["peak_mb"] = rusage.ru_maxrss / 1024
    record["cpu"] = rusage.ru_utime + rusage.ru_stime  # CPU seconds: far less sensitive to a busy machine
    return record


def twin_bundle(bundle: Path, workdir: Path) -> Path:
    """A copy of the bundle with a 0.1.0-style pre-optimised twin (listed, as 0.1.0 listed them)."""
    from tumor_edge.contracts.bundle import BundleMetadata, describe_file, optimized_model_name
    from tumor_edge.runtime.backends import save_optimized_model

    out = workdir / "bundle-int8-299-twin"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    twin = save_optimized_model(out / MODEL, out / optimized_model_name(MODEL))
    meta = BundleMetadata.read(out)
    meta.models[twin.name] = describe_file(twin, "onnx", "int8", ort_optimized_from=MODEL)
    meta.write(out)
    return out


def measure(bundle: Path, image: Path, workdir: Path, runs: int) -> dict[str, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUMOR_EDGE_")}
    base["PYTHONPATH"] = str(ROOT)
    cache = workdir / "cache"
    # Made in a child: Linux carries a parent's RSS high-water mark into its children's ru_maxrss across
    # fork + exec, so this process must never load a model itself.
    twin = Path(subprocess.run([sys.executable, __file__, "--twin-only", str(workdir)], check=True,
                               capture_output=True, text=True).stdout.strip())
    cases = [(case, check) for check in (True, False) for case in ("no-cache", "twin", "first", "second")]
    results: dict[str, list[dict]] = {f"{case}/{'hash' if check else 'no-hash'}": [] for case, check in cases}
    for _ in range(runs):  # round robin: a burst of load on a shared machine hits every case alike
        for case, check in cases:
            env = dict(base, TUMOR_EDGE_CACHE_DIR=str(cache))
            if case in ("no-cache", "twin"):
                env["TUMOR_EDGE_NO_CACHE"] = "1"
            if case == "first":
                shutil.rmtree(cache, ignore_errors=True)
            if case == "second" and not any(cache.rglob("*.onnx")):
                one_run(bundle, image, env, check)  # prime the cache
            record = one_run(twin if case == "twin" else bundle, image, env, check)
            results[f"{case}/{'hash' if check else 'no-hash'}"].append(record)
    return {name: summarize(rows) for name, rows in results.items()}


def summarize(rows: list[dict]) -> dict:
    keys = ("total", "startup", "imports", "load", "predict", "peak_mb", "cpu")
    out = {k: statistics.median(r[k] for r in rows) for k in keys}
    out["total_min"] = min(r["total"] for r in rows)
    out["cpu_min"] = min(r["cpu"] for r in rows)
    out["kinds"] = sorted({r["kind"] for r in rows})
    out["runs"] = len(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-coldstart"),
                        help="where the model is built once and the cache lives")
    parser.add_argument("--runs", type=int, default=5, help="processes per case (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not (args.workdir / "bundle-int8-299" / MODEL).is_file():  # build in a child: TensorFlow's memory stays there
        subprocess.run([sys.executable, __file__, "--build-only", str(args.workdir)], check=True)
    bundle = args.workdir / "bundle-int8-299"
    image = scan_image(args.workdir)  # Pillow + numpy only: a few MB, below any child's peak
    from tumor_edge.machine import host, load_average

    before = load_average()
    results = measure(bundle, image, args.workdir, args.runs)
    after = load_average()
    machine = host()
    print(f"cold start, int8 ONNX InceptionV3 299 px, one image; {machine['cpu']} ({machine['isa']}); "
          f"load average {before} -> {after}; median of {args.runs} processes")
    print("wall seconds from spawn to result (median and min), its parts (median), CPU seconds of the process "
          "(median and min), peak RSS (median)")
    print(f"{'case':<18} {'total':>7} {'min':>7} {'startup':>8} {'imports':>8} {'load':>7} {'predict':>8} "
          f"{'cpu':>6} {'cpu min':>7} {'peak MB':>8}  kind")
    for name, r in results.items():
        print(f"{name:<18} {r['total']:7.3f} {r['total_min']:7.3f} {r['startup']:8.3f} {r['imports']:8.3f} "
              f"{r['load']:7.3f} {r['predict']:8.3f} {r['cpu']:6.3f} {r['cpu_min']:7.3f} {r['peak_mb']:8.1f}  "
              f"{','.join(r['kinds'])}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load_average": [before, after], "results": results},
                                        indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-only":
        print(build_bundle(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--twin-only":
        print(twin_bundle(Path(sys.argv[2]) / "bundle-int8-299", Path(sys.argv[2])))
    else:
        main()
