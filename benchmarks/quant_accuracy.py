#!/usr/bin/env python
"""The accuracy-aware ONNX int8 search on the 299 px InceptionV3 stand-in: what it costs, what stays float, and
how much int8 speed the fallback keeps (latency of naive int8, the shipped int8 and fp32, interleaved).

    python benchmarks/quant_accuracy.py [--work /tmp/quantbench/299] [--val 48] [--min-agreement 0.995]

The stand-in has random weights, so its predictions are near-ties that any int8 noise flips: a harsh case that
makes the search work hard (a trained model needs far fewer float nodes). Labels are the fp32 predictions.
Results: benchmarks/results/quant-accuracy-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.quant_build import calibration_pixels  # noqa: E402
from tumor_edge.contracts.preprocessing import Preprocessing  # noqa: E402
from tumor_edge.export.quantize import ParityGoal, QuantizationConfig, quantize_onnx_int8  # noqa: E402
from tumor_edge.export.quantize.scoring import probabilities  # noqa: E402
from tumor_edge.machine import load_average, machine_info, machine_summary  # noqa: E402


def _latency(paths: dict[str, Path], x: np.ndarray, rounds: int = 15) -> dict[str, float]:
    from tumor_edge.runtime.backends import BackendOptions, open_backend

    runs = {k: open_backend(p, BackendOptions(threads=1, use_optimized=False)).run for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run(x)
    for _ in range(rounds):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(float(np.median(v)), 1) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbench/299"))
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--min-agreement", type=float, default=0.995)
    parser.add_argument("--max-probes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    fp32 = args.work / "model_fp32.onnx"
    size = 299
    spec = Preprocessing(size, size, scaling="none")
    calib = np.load(args.work / "calibration_pixels.npy")
    val = calibration_pixels(args.val, size, seed=1)
    load_start = load_average()
    labels = probabilities(fp32, val, spec, 16).argmax(1)
    work = args.work / "accuracy_work"
    work.mkdir(exist_ok=True)
    config = QuantizationConfig(methods=("minmax",), goal=ParityGoal(min_agreement=args.min_agreement),
                                max_probes=args.max_probes, probe_images=16)
    t0 = time.perf_counter()
    report = quantize_onnx_int8(fp32, args.work / "model_int8_aware.onnx", calib, val, labels, 4, spec, config,
                                work, show_progress=False)
    seconds = time.perf_counter() - t0
    naive = args.work / "model_int8_naive.onnx"
    quantize_onnx_int8(fp32, naive, calib, None, None, 4, spec, QuantizationConfig(methods=("minmax",)), work,
                       show_progress=False)
    latency = _latency({"onnx fp32": fp32, "int8 naive": naive, "int8 accuracy-aware": args.work /
                        "model_int8_aware.onnx"}, calib[:1].astype(np.float32))
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine_summary":
              machine_summary(machine_info()), "load_start": load_start, "load_end": load_average(),
              "validation_images": args.val, "seconds": round(seconds, 1), "latency_ms_1_thread_batch_1": latency,
              "report": report.to_dict()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quant-accuracy-{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}.json"
    path.write_text(json.dumps(record, indent=1, default=float))
    aware = report.accuracy_aware or {}
    print(json.dumps({"seconds": record["seconds"], "latency": latency, "naive": aware.get("naive"),
                      "final": aware.get("final"), "outcome": aware.get("outcome"),
                      "float_nodes": len(aware.get("float_nodes", [])), "steps": len(aware.get("steps", [])),
                      "timings": report.seconds}, indent=1, default=float))
    print(f"record: {path}")


if __name__ == "__main__":
    main()
