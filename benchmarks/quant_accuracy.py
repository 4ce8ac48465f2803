#!/usr/bin/env python
"""The accuracy-aware ONNX int8 search on the 299 px InceptionV3 stand-in: what it costs, what stays float, and
how much int8 speed the fallback keeps (latency of naive int8, the shipped int8 and fp32, interleaved).

    python -m benchmarks.quant_accuracy [--work /tmp/quantbench/299] [--val 48] [--min-agreement 0.995]

The stand-in has random weights, and a random InceptionV3 gives every image the same prediction, which int8 cannot
flip. So the head is re-fitted first: the pooled features are standardised on the images (a float Mul/Add in
front of the classifier MatMul) and the MatMul gets random weights, which spreads the predictions over the four
classes with many near-ties: a harsh case that makes the search work (a trained model has wider margins).
Labels are the fp32 predictions.
Results: benchmarks/results/quant-accuracy-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.quant_build import calibration_pixels
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.export.quantize import ParityGoal, QuantizationConfig, quantize_onnx_int8
from tumor_edge.export.quantize.scoring import probabilities
from tumor_edge.machine import load_average, machine_info, machine_summary

HERE = Path(__file__).resolve().parent


def _latency(paths: dict[str, Path], x: np.ndarray, rounds: int = 15) -> dict[str, float]:
    from tumor_edge.runtime import BackendOptions, open_backend

    runs = {k: open_backend(p, BackendOptions(threads=1)).run for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run(x)
    for _ in range(rounds):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(float(np.median(v)), 1) for k, v in times.items()}


def spread_head(src: Path, dst: Path, pixels: np.ndarray, spec: Preprocessing, seed: int = 0) -> Path:
    """Standardise the classifier MatMul's input features and give it random weights (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    head = next(n for n in reversed(model.graph.node) if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(head.input[0], TensorProto.FLOAT, None))
    features = np.concatenate([probabilities_of(probe, pixels[i:i + 8], spec, -1) for i in range(0, len(pixels), 8)])
    mean, std = features.mean(0), features.std(0) + 1e-6
    weight = numpy_helper.to_array(inits[head.input[1]])
    rng = np.random.default_rng(seed)
    new = rng.normal(0, 1.0, weight.shape).astype(np.float32)
    inits[head.input[1]].CopyFrom(numpy_helper.from_array(new, head.input[1]))
    model.graph.initializer.extend([numpy_helper.from_array((1 / std).astype(np.float32), "spread_scale"),
                                    numpy_helper.from_array((-mean / std).astype(np.float32), "spread_shift")])
    feature = head.input[0]
    nodes = [helper.make_node("Mul", [feature, "spread_scale"], ["spread_scaled"], name="spread_mul"),
             helper.make_node("Add", ["spread_scaled", "spread_shift"], ["spread_features"], name="spread_add")]
    head.input[0] = "spread_features"
    index = list(model.graph.node).index(head)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(index + offset, node)
    onnx.save(model, str(dst))
    return dst


def probabilities_of(model, pixels: np.ndarray, spec: Preprocessing, output: int = 0) -> np.ndarray:
    from tumor_edge.export.quantize.scoring import session
    from tumor_edge.runtime import scale

    sess = session(model)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: scale(pixels, spec)})[output], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbench/299"))
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--min-agreement", type=float, default=0.995)
    parser.add_argument("--max-probes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    size = 299
    spec = Preprocessing(size, size, scaling="none")
    calib = np.load(args.work / "calibration_pixels.npy")
    val = calibration_pixels(args.val, size, seed=1)
    load_start = load_average()
    fp32 = spread_head(args.work / "model_fp32.onnx", args.work / "model_fp32_spread.onnx",
                       np.concatenate([calib, val]), spec)
    labels = probabilities(fp32, val, spec, 16).argmax(1)
    print(f"fp32 predictions per class on the validation images: {np.bincount(labels, minlength=4)}", flush=True)
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
