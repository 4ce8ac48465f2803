#!/usr/bin/env python
"""int8 speed on this CPU: onnxruntime int8 recipes against LiteRT int8 and onnxruntime fp32, the CPU's integer
and float matmul ceilings, and what onnxruntime actually runs (optimised graph, per-op profile).

    python -m benchmarks.quant_speed [--work /tmp/quantbench/299] [--rounds 20] [--out benchmarks/results]

The model is the 299 px InceptionV3 stand-in of benchmarks/quant_build.py (random weights: latency does not
depend on them), built once in a separate process. int8 variants come from the project's own quantization code
(tumor_edge.export.quantize) with one calibration pass shared by all. Every configuration (threads x batch)
times all formats interleaved run by run, so load bursts from the machine's other users hit all alike; the
load average is recorded at start and end. Results: benchmarks/results/quant-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.export.quantize import QuantizationConfig, collect_ranges
from tumor_edge.export.quantize.graph import (
    depthwise_average_pools,
    float_average_pools,
    head_nodes,
    int8_nodes,
    preprocess_for_quantization,
)
from tumor_edge.export.quantize.onnx_int8 import quantize_with_ranges
from tumor_edge.machine import load_average, machine_info, machine_summary

HERE = Path(__file__).resolve().parent

# name -> config changes; the first is the project default on this CPU.
VARIANTS: dict[str, dict] = {
    "int8 default": {},
    "int8 per-tensor": {"per_channel": False},
    "int8 reduce_range": {"reduce_range": True},
    "int8 s8 activations": {"activations": "int8"},
    "int8 float avg pools": {"average_pools": "float"},
    "int8 QDQ avg pools": {"average_pools": "int8"},
}


def build_variants(work: Path, calib: np.ndarray, spec: Preprocessing) -> dict[str, Path]:
    """One calibration (on the depthwise-pool graph, whose tensors include every other variant's), then each
    variant quantized from its own prepared graph."""
    import onnx

    out = {name: work / f"model_{name.replace(' ', '_')}.onnx" for name in VARIANTS}
    if all(p.is_file() for p in out.values()):
        return out
    plain = preprocess_for_quantization(work / "model_fp32.onnx", work / "model_fp32.pre.onnx")
    sources: dict[str, tuple[Path, list[str]]] = {}
    for pools in ("depthwise", "float", "int8"):
        model = onnx.load(str(plain))
        exclude = head_nodes(model)
        if pools == "float":
            exclude += float_average_pools(model)
        elif pools == "depthwise":
            depthwise_average_pools(model)
        sources[pools] = (work / f"model_fp32.pre.{pools}.onnx", exclude)
        onnx.save(model, str(sources[pools][0]))
    base = QuantizationConfig(methods=("minmax",), reduce_range=False)
    t0 = time.perf_counter()
    ranges = collect_ranges(sources["depthwise"][0], calib, spec, base, work, show_progress=False)["minmax"]
    print(f"calibration ({len(calib)} images): {time.perf_counter() - t0:.1f} s", flush=True)
    for name, changes in VARIANTS.items():
        t0 = time.perf_counter()
        config = replace(base, **changes)
        src, exclude = sources[config.average_pools]
        quantize_with_ranges(src, out[name], "minmax", ranges, config, exclude, work)
        print(f"{name}: quantized in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _runner(path: Path, threads: int, spin: bool = False):
    from tumor_edge.runtime import BackendOptions, open_backend

    backend = open_backend(path, BackendOptions(threads=threads, spin=spin))
    return backend.run


def time_formats(formats: dict[str, tuple[Path, bool]], pixels: np.ndarray, threads: int, batch: int,
                 rounds: int) -> dict[str, dict]:
    """All formats interleaved: round r runs each once (order rotated), after two warm-up runs each."""
    x = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])).astype(np.float32))
    runners = {name: _runner(path, threads, spin) for name, (path, spin) in formats.items()}
    for run in runners.values():
        run(x)
        run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: {"p50_ms": float(np.median(t)), "min_ms": float(np.min(t)), "p90_ms": float(np.percentile(t, 90)),
                   "runs": len(t)} for name, t in times.items()}


def matmul_ceiling(threads: int, n: int = 1024, seconds: float = 1.5) -> dict[str, float]:
    """GMAC/s of onnxruntime's own MatMulInteger (u8 x s8 -> s32, the MLAS int8 GEMM every int8 conv uses) and
    float MatMul on n x n matrices, best of repeated runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    result = {}
    for kind in ("int8", "fp32"):
        if kind == "int8":
            a = rng.integers(0, 255, (n, n), dtype=np.uint8)
            b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "b")
            node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
            in_type, out_type = TensorProto.UINT8, TensorProto.INT32
        else:
            a = rng.normal(size=(n, n)).astype(np.float32)
            b = numpy_helper.from_array(rng.normal(size=(n, n)).astype(np.float32), "b")
            node = helper.make_node("MatMul", ["a", "b"], ["y"])
            in_type = out_type = TensorProto.FLOAT
        graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", in_type, [n, n])],
                                  [helper.make_tensor_value_info("y", out_type, [n, n])], [b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, {"a": a})
        best, start = np.inf, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            best = min(best, time.perf_counter() - t0)
        result[kind] = n ** 3 / best / 1e9
    return result


def inspect_graph(path: Path, work: Path, pixels: np.ndarray, runs: int = 10) -> dict:
    """What onnxruntime runs at level 'all': op types of the optimised graph, float convs left, and the
    per-op-type share of the time from its own profiler (1 thread, batch 1)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(work / f"{path.stem}.optimized.onnx")
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(work / f"profile_{path.stem}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = pixels[:1].astype(np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    profile = Path(sess.end_profiling())
    per_op: dict[str, float] = {}
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event.get("dur", 0) / 1000 / runs
    profile.unlink(missing_ok=True)
    optimized = onnx.load(so.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        key = f"{node.domain + '.' if node.domain else ''}{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    total = sum(per_op.values()) or 1.0
    return {"optimized_op_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "profile_ms_per_run": {k: round(v, 2) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "profile_share": {k: round(v / total, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}}


def render(record: dict) -> str:
    lines = [f"# int8 speed, {record['date']}", "", f"- machine: {record['machine_summary']}",
             f"- load average: start {record['load_start']}, end {record['load_end']}",
             f"- model: InceptionV3 stand-in, {record['image_size']} px, {record['gmac']:.2f} GMAC/image",
             "- ceilings (onnxruntime, 1024^3, GMAC/s): " + ", ".join(
                 f"{t} thr: int8 MatMulInteger {c['int8']:.0f}, fp32 MatMul {c['fp32']:.0f}"
                 for t, c in record["ceilings"].items()), "",
             "| format | threads | batch | p50 ms | min ms | vs LiteRT int8 | GMAC/s | of int8 ceiling | "
             "of fp32 ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        lines.append(f"| {row['format']} | {row['threads']} | {row['batch']} | {row['p50_ms']:.1f} | "
                     f"{row['min_ms']:.1f} | {row['vs_litert_int8']:.2f}x | {row['gmacs']:.0f} | "
                     f"{row['of_int8_ceiling']:.0%} | {row['of_fp32_ceiling']:.0%} |")
    for name, info in record["graphs"].items():
        lines += ["", f"## What onnxruntime runs: {name}", "",
                  f"- optimised graph op counts: {info['optimized_op_counts']}",
                  "- profile, ms per run at 1 thread (share): " + ", ".join(
                      f"{k} {v} ({info['profile_share'][k]:.0%})" for k, v in info["profile_ms_per_run"].items()),
                  f"- int8 kernels in the QDQ graph: {info.get('int8_nodes')}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbench/299"))
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--rounds", type=int, default=20, help="timed runs per format at batch 1 (batch 8: 1/3)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", help="comma-separated formats to time (default: all), e.g. "
                        "'onnx fp32,int8 default,litert int8' for more rounds in the same time")
    parser.add_argument("--no-inspect", action="store_true", help="skip the optimised-graph / profile section")
    args = parser.parse_args()
    if not (args.work / "model_int8.tflite").is_file():
        subprocess.run([sys.executable, "-m", "benchmarks.quant_build", "--work", str(args.work),
                        "--image-size", str(args.image_size)], check=True)
    load_start = load_average()
    pixels = np.load(args.work / "calibration_pixels.npy")
    spec = Preprocessing(args.image_size, args.image_size, scaling="none")
    variants = build_variants(args.work, pixels, spec)
    from tumor_edge.bench.analysis import count_macs

    macs = count_macs(args.work / "model_fp32.onnx") or 0
    formats = {"onnx fp32": (args.work / "model_fp32.onnx", False),
               **{name: (path, False) for name, path in variants.items()},
               "int8 default, spinning": (variants["int8 default"], True),
               "litert int8": (args.work / "model_int8.tflite", False)}
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")} | {"litert int8"}
        formats = {name: value for name, value in formats.items() if name in wanted}
    ceilings = {t: matmul_ceiling(t) for t in (1, 2)}
    rows = []
    for threads in (1, 2):
        for batch in (1, 8):
            rounds = args.rounds if batch == 1 else max(3, args.rounds // 3)
            t0 = time.perf_counter()
            timed = time_formats(formats, pixels, threads, batch, rounds)
            print(f"threads {threads} batch {batch}: {time.perf_counter() - t0:.0f} s, load {load_average()}",
                  flush=True)
            lite = timed["litert int8"]["p50_ms"]
            for name, t in timed.items():
                gmacs = macs * batch / (t["p50_ms"] / 1000) / 1e9
                rows.append({"format": name, "threads": threads, "batch": batch, **t,
                             "vs_litert_int8": t["p50_ms"] / lite, "gmacs": gmacs,
                             "of_int8_ceiling": gmacs / ceilings[threads]["int8"],
                             "of_fp32_ceiling": gmacs / ceilings[threads]["fp32"]})
    for t in (1, 2):  # a second pass: load only slows a ceiling down, keep the best
        again = matmul_ceiling(t)
        ceilings[t] = {k: max(v, again[k]) for k, v in ceilings[t].items()}
    for row in rows:
        row["of_int8_ceiling"] = row["gmacs"] / ceilings[row["threads"]]["int8"]
        row["of_fp32_ceiling"] = row["gmacs"] / ceilings[row["threads"]]["fp32"]
    import onnx

    graphs = {}
    for name in () if args.no_inspect else ("int8 default", "int8 float avg pools", "int8 QDQ avg pools"):
        graphs[name] = inspect_graph(variants[name], args.work, pixels)
        graphs[name]["int8_nodes"] = len(int8_nodes(onnx.load(str(variants[name]))))
    if not args.no_inspect:
        graphs["onnx fp32"] = inspect_graph(args.work / "model_fp32.onnx", args.work, pixels)
    info = machine_info()
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
              "machine_summary": machine_summary(info), "load_start": load_start, "load_end": load_average(),
              "image_size": args.image_size, "gmac": macs / 1e9, "ceilings": ceilings, "rows": rows,
              "graphs": graphs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"quant-{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    stem.with_suffix(".md").write_text(render(record))
    print(render(record))


if __name__ == "__main__":
    main()
