#!/usr/bin/env python
"""The standard latency suite: 299x299 InceptionV3, every format, threads 1 and 2, batch 1 and 8.

    python -m benchmarks.run_suite                   # random-weight stand-in, exported here (latency only)
    python -m benchmarks.run_suite --bundle BUNDLE   # a trained bundle (its run folder gives the Keras reference)

Latency does not depend on the weights' values, so without a bundle the script builds the project's classifier
with random weights, saves it as a run folder and exports it with `tumor-edge export` itself (benchmarks/
standin.py; cached under --workdir for the next run, --rebuild-stand-in after export changes). Each run
is recorded as benchmarks/results/<date>-<commit>.json (with the machine and load average), compared with the
previous record, and benchmarks/README.md is regenerated with the latest figures and the history.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.standin import QUICK_EXPORT_ARGS, stand_in_bundle
from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench
from tumor_edge.bench.history import (
    compare_records,
    load_history,
    render_comparison,
    render_readme,
    result_name,
    unique_path,
)
from tumor_edge.bench.report import render_chart, render_text
from tumor_edge.machine import load_average

HERE = Path(__file__).resolve().parent

STANDARD = {"image_size": 299, "threads": [1, 2], "batches": [1, 8], "warmup": 2, "min_runs": 10,
            "min_seconds": 2.0, "cold_runs": 3, "image_count": 16}

INTRO = """# Benchmarks

The standard latency suite of `tumor-edge bench`: InceptionV3 at 299x299, every file of the bundle (ONNX
fp32/fp16/int8 through onnxruntime, TFLite fp32/fp16/int8 through LiteRT) and the Keras model itself as the
reference (a `tf.function`, never eager), at 1 and 2 threads, batch 1 and 8.

How it measures (LiteRT benchmark_model / onnxruntime perf test / MLPerf SingleStream): warm-up runs first, then
at least 10 runs and 2 s per configuration, formats interleaved run by run so a burst of load hits all alike;
inputs are decoded, resized test-split images (never zeros), prepared before timing; min, p50, p90, p99, mean,
std (sample) and images/s per configuration. Cold start is a fresh process from spawn to its first result for
one image file, with that process's peak RSS from the kernel's accounting of the reaped child (3 processes per
file, 1 for Keras). Two matmul ceilings, each measured in a fresh process per thread count before and after
the formats (the best is kept: load only slows it), each 1024^3 (short runs, so that on a shared machine the best
of many finds the moments the cores were free), both through onnxruntime itself so that no BLAS setting moves
them: float32, a `MatMul` (MLAS's sgemm, so that no BLAS setting holds it to
narrower kernels than ONNX fp32 runs), and int8, a uint8 x int8 `MatMulInteger` (MLAS's integer GEMM, the kernels a
QDQ model's QLinearConv runs on). Beside them the ISA's theoretical peak (FMA units x vector lanes x the reported
clock, assumptions printed; a ceiling above it is flagged with the clock it implies), and a format above its own
ceiling is flagged as a measurement error. Each format's achieved GMAC/s (MACs counted from the ONNX graph:
5.71 GMAC per 299x299 image) is shown as a fraction of the ceiling of its own arithmetic: fp32 and fp16 files
against the float32 one, int8 files against the int8 one; each goal says what fraction of that ceiling meeting
it would take. The int8 table sets onnxruntime's int8 against LiteRT's at every thread count and batch.

Goals (batch 1, 299x299, 2 threads): ONNX fp32 p50 <= 0.45x Keras and <= 0.8x LiteRT fp32; ONNX int8 no slower
than ONNX fp32, nor than LiteRT int8.

Run it: `python -m benchmarks.run_suite` (a random-weight stand-in of the real architecture exported by
`tumor-edge export --int8 --fp16 --no-parity` itself, calibrated on demo images, so it is exactly what users get;
latency does not depend on the weights; built once, then reused: `--rebuild-stand-in` after export changes) or
`python -m benchmarks.run_suite --bundle BUNDLE --run RUN` for a trained model. Each run adds a record
`results/<date>-<commit>.json` (every timing, the machine, the load average) and regenerates this file.
Compare any run with a saved one: `tumor-edge bench --baseline benchmarks/results/<file>.json`.

The machine these figures come from may be shared (the load average at start and end is recorded): figures
taken under load are slower and noisier, 2-thread ones most, so compare runs with similar load, or rerun
(`--quiet-load 1.0` waits for a quiet machine).

How to run any script here: from the repository root, as a module of the `benchmarks` package, with tumor-edge
installed (`pip install -e '.[all]'`; the TensorFlow scripts need `[train]`, the runtime ones only the base
install): `python -m benchmarks.<name> --help` says what each takes, e.g. `python -m benchmarks.run_suite`,
`python -m benchmarks.read_once --help`. The scripts share helpers (`standin.py`, `proctree.py`) by plain
imports and reach the runtime only through its public names (`from tumor_edge.runtime import ...`; the import
contracts check it); `tests/bench/test_benchmark_scripts.py` runs every script's `--help` (a new script is
found by its `__main__` block) and checks that none imports TensorFlow to print it.

Other scripts here, each writing its figures (with the CPU and the load average) to `results/`:
- `export_memory.py`: `tumor-edge export` at 299 px, whole process tree sampled (peak per step, CPU, wall).
- `demo_memory.py`: `tumor-edge demo` end to end, per-stage peaks of the process tree, held-out accuracy.
- `folder_throughput.py`: `classify` of a folder of 1,000 scans (and the in-process stream) against the engine's own
  images/s at the same batch size and threads (`results/engine-speed-2026-12-03.md`).
- `read_once.py`: cold start of one `classify` (CPU, peak) at 96 and 299 px, int8 and fp32, reading each file once
  against another checkout (`results/read-once-2026-12-07.md`).
- `batch_throughput.py`: the same scans through `classify FOLDER` and `tumor-edge batch` on a local Ray at 1 and 2
  workers, images/s with and without start-up, peak memory, and a labelled N-node projection.
- `runtime_memory.py`: `classify` memory over thousands of files, with and without hostile ones.
- `training_memory.py`, `training_precision.py`: training memory against dataset size; float32 vs mixed precision.
- `training_gpu.py`: on a GPU machine, training throughput of `train`'s own model per precision policy and
  XLA on/off, one process per configuration (first figures, a lent H200: `results/training-gpu-2026-11-27.md`).
- `quant_build.py`, `quant_speed.py`, `quant_accuracy.py`: int8 variants built, timed and scored.
- `ood_rates.py`, `heatmap_parity.py`: out-of-distribution warning rates; class-activation-map parity at 299 px.
- `serve_load.py`: 500 requests from 16 concurrent clients against `tumor-edge serve` on loopback."""


def git_commit(repo: Path) -> tuple[str | None, bool]:
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                     "--", "tumor_edge"], capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, False


def wait_for_quiet(threshold: float, max_wait: float) -> list[float] | None:
    """Wait (up to max_wait s) until the 1-minute load average drops below threshold; return the last reading."""
    deadline = time.monotonic() + max_wait
    load = load_average()
    while load and load[0] >= threshold and time.monotonic() < deadline:
        print(f"load average {load[0]:.2f} >= {threshold}: waiting", file=sys.stderr)
        time.sleep(15)
        load = load_average()
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a trained bundle (default: a random-weight stand-in)")
    parser.add_argument("--run", type=Path, help="the bundle's training run folder (Keras reference)")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "tumor-edge-bench" / "stand-in",
                        help="where the stand-in bundle is built and kept for the next run")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="the results history folder")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--image-size", type=int, default=STANDARD["image_size"])
    parser.add_argument("--rebuild-stand-in", action="store_true",
                        help="export the stand-in again even when a complete one is cached (after export changes)")
    parser.add_argument("--export-args", default=" ".join(QUICK_EXPORT_ARGS),
                        help="extra `tumor-edge export` options for the stand-in (quoted, space-separated)")
    parser.add_argument("--threads", default=",".join(map(str, STANDARD["threads"])),
                        help="comma-separated thread counts (a shortened run may drop some)")
    parser.add_argument("--batches", default=",".join(map(str, STANDARD["batches"])),
                        help="comma-separated batch sizes")
    parser.add_argument("--cold-runs", type=int, default=STANDARD["cold_runs"])
    parser.add_argument("--min-runs", type=int, default=STANDARD["min_runs"])
    parser.add_argument("--min-seconds", type=float, default=STANDARD["min_seconds"])
    parser.add_argument("--quiet-load", type=float, default=None,
                        help="wait until the 1-minute load average is below this before timing")
    parser.add_argument("--max-wait", type=float, default=600.0, help="longest wait for --quiet-load (s)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="regression tolerance vs the previous run")
    parser.add_argument("--note", default="", help="a remark stored with the record (e.g. what else was running)")
    parser.add_argument("--dry-run", action="store_true", help="run, print, but record nothing")
    parser.add_argument("--readme-only", action="store_true",
                        help="only regenerate the README from the recorded results")
    args = parser.parse_args(argv)
    if args.readme_only:
        write_readme(args.results, args.readme, args.results / "latest.png")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    started = time.perf_counter()
    export_s = 0.0
    bundle, run = args.bundle, args.run
    if bundle is None:
        bundle, run, export_s = stand_in_bundle(args.workdir.expanduser() / f"{args.image_size}px", args.image_size,
                                                log, args.rebuild_stand_in, args.export_args.split())
    waited = time.perf_counter()
    if args.quiet_load is not None:
        wait_for_quiet(args.quiet_load, args.max_wait)
    waited = time.perf_counter() - waited
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    config = BenchConfig(model=bundle, threads=threads, batches=batches,
                         plan=RunPlan(STANDARD["warmup"], args.min_runs, args.min_seconds),
                         image_count=STANDARD["image_count"], run=run, cold_start=args.cold_runs > 0,
                         cold_runs=max(1, args.cold_runs))
    record = run_bench(config)
    commit, dirty = git_commit(HERE.parent)
    record["suite"] = {
        "name": "standard", "commit": commit, "dirty": dirty,
        "stand_in": ("random weights, exported by `tumor-edge export --int8 --fp16 --no-parity "
                     f"{args.export_args}`") if args.bundle is None else None,
        "settings": {**STANDARD, "image_size": args.image_size, "min_runs": args.min_runs,
                     "min_seconds": args.min_seconds, "threads": threads, "batches": batches,
                     "cold_runs": args.cold_runs},
        "bench_s": record["duration_s"], "export_s": export_s, "waited_for_quiet_s": waited,
        "total_s": time.perf_counter() - started - waited,
        "load_average_start": record["machine"].get("load_average"), "load_average_end": load_average(),
        "note": args.note,
    }
    print(render_text(record))
    history = load_history(args.results)
    if history:
        previous_path, previous = history[-1]
        print()
        print(render_comparison(compare_records(record, previous, args.tolerance), previous_path, args.tolerance))
    print(f"suite: bench {record['duration_s']:.0f} s, export {export_s:.0f} s, "
          f"total {record['suite']['total_s']:.0f} s (plus {waited:.0f} s waiting for a quiet machine)")
    if args.dry_run:
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    path = unique_path(args.results, result_name(record))
    path.write_text(json.dumps(record, indent=1) + "\n")
    chart = render_chart(record, args.results / "latest.png")
    write_readme(args.results, args.readme, chart)
    log(f"recorded {path} and regenerated {args.readme}")
    return 0


def write_readme(results: Path, readme: Path, chart: Path | None) -> None:
    chart_ref = os.path.relpath(chart, readme.parent) if chart is not None and chart.is_file() else None
    readme.write_text(render_readme(load_history(results), INTRO, chart_ref))


if __name__ == "__main__":
    sys.exit(main())
