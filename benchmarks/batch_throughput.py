#!/usr/bin/env python
"""`tumor-edge batch` on a local Ray against `tumor-edge classify FOLDER`: the same scans, the same bundle.

    python -m benchmarks.batch_throughput --stand-in 96 [--count 2000] [--json OUT]
    python -m benchmarks.batch_throughput --bundle BUNDLE --count 2000 --json OUT   # e.g. 299 px InceptionV3 int8

Figures, each a fresh process (`python -m tumor_edge.cli ...`), spawn to exit, in rounds (a burst of load hits all):
  classify        `classify --csv FOLDER` at its defaults (threads: all cores, 2 decode threads, batch 4).
  batch-wN        `batch FOLDER --out FRESH --workers N` (a new local Ray each time, 1 CPU per actor).
For each: images/s with start-up (count / wall) and without it (results after the first one / the time from
the first result to the last: classify's rows as they reach stdout, batch's Parquet blocks as the driver receives
them), and the peak resident memory of the whole process tree (Ray's raylet, GCS and actors are the driver's
descendants). No CPU seconds: wait4 counts only the descendants a process reaps, and Ray's actors are not reaped
by the driver. Ratios to classify within one run are the figures to compare; the load average is
recorded beside them. The projection to N nodes multiplies the measured 2-worker rate after start-up by N; it
is labelled a projection (storage and network are assumed not to limit), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.folder_throughput import load_average, make_scans
from benchmarks.proctree import tree_rss

ROOT = Path(__file__).resolve().parent.parent


def measured(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Wall, CPU, peak tree RSS and the arrival time of each stdout line of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[float] = []
    peak = [0]

    def read() -> None:
        for _ in proc.stdout:
            lines.append(time.perf_counter() - start)

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid)[0])
            time.sleep(0.1)

    threads = [threading.Thread(target=read), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    err = proc.stderr.read()
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(cmd[3:5])} failed ({proc.returncode}): {err.strip().splitlines()[-3:]}")
    return {"wall_s": round(wall, 3), "peak_rss_mib": round(peak[0] / 2**20, 1), "line_times": lines,
            "stderr_tail": err[-600:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", type=Path, help="a bundle folder (e.g. a 299 px InceptionV3 int8 export)")
    what.add_argument("--stand-in", type=int, metavar="PX",
                      help="build (once) and use the random-weight stand-in of this input size (96: demo-sized)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-batch-bench"))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--scan-size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8, 16], help="node counts to project to")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if bundle is None:
        from benchmarks.standin import stand_in_bundle

        bundle = stand_in_bundle(args.workdir / f"standin{args.stand_in}", args.stand_in, print)[0]
    folder = make_scans(args.workdir / f"scans{args.scan_size}", args.count, args.scan_size)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TUMOR_EDGE_CACHE_DIR=str(args.workdir / "cache"))
    env.pop("RAY_ADDRESS", None)
    base = [sys.executable, "-m", "tumor_edge.cli"]
    model = ["--model", str(bundle)]
    one = str(next(folder.iterdir()))
    subprocess.run([*base, "classify", *model, one], env=env, cwd=args.workdir, check=True, capture_output=True)
    runs: dict[str, list[dict]] = {"classify": [], **{f"batch-w{w}": [] for w in args.workers}}
    loads = [load_average()]
    for _ in range(args.repeats):
        runs["classify"].append(_classify(base, model, folder, args.count, env, args.workdir))
        for w in args.workers:
            runs[f"batch-w{w}"].append(_batch(base, model, folder, args.count, w, args.workdir / f"results-w{w}",
                                              env, args.workdir))
        loads.append(load_average())
    result = report(runs, args, bundle, loads)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def _classify(base, model, folder, count, env, cwd) -> dict:
    run = measured([*base, "classify", *model, "--csv", "--no-progress", str(folder)], env, cwd)
    rows = run.pop("line_times")[1:]  # the header line first
    assert len(rows) == count, f"classify gave {len(rows)} rows for {count} scans"
    return {**run, "images_per_s": round(count / run["wall_s"], 1),
            "images_per_s_after_first_result": round((count - 1) / (rows[-1] - rows[0]), 1),
            "first_result_s": round(rows[0], 2)}


def _batch(base, model, folder, count, workers, out, env, cwd) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    run = measured([*base, "batch", str(folder), *model, "--out", str(out), "--workers", str(workers),
                    "--no-progress"], env, cwd)
    run.pop("line_times")
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["inputs_with_rows"] == count, summary
    this = summary["this_run"]
    return {**run, "images_per_s": round(count / run["wall_s"], 1),
            "images_per_s_after_first_result": this["scans_per_s_after_first_result"],
            "first_result_s": this["first_result_s"], "workers": this["workers"]}


def report(runs: dict[str, list[dict]], args, bundle: Path, loads: list) -> dict:
    from tumor_edge.machine import host

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 1)

    keys = ("images_per_s", "images_per_s_after_first_result", "peak_rss_mib", "first_result_s")
    figures = {name: {k: median(name, k) for k in keys} for name in runs}
    base = figures["classify"]
    ratios = {name: {"with_start_up": round(f["images_per_s"] / base["images_per_s"], 3),
                     "without_start_up": round(f["images_per_s_after_first_result"]
                                               / base["images_per_s_after_first_result"], 3)}
              for name, f in figures.items() if name != "classify"}
    widest = f"batch-w{max(args.workers)}"
    rate = figures[widest]["images_per_s_after_first_result"]
    projection = {"label": f"PROJECTION, not measured: N nodes x the measured {widest} rate after start-up on this "
                           "machine, assuming storage and network keep up and each node is like this one",
                  "images_per_s": {str(n): round(n * rate, 1) for n in args.nodes}}
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host(),
            "cpus": os.cpu_count(), "load_average": loads, "bundle": str(bundle), "count": args.count,
            "scan": f"{args.scan_size}x{args.scan_size} JPEG q92", "repeats": args.repeats, "figures": figures,
            "of_classify": ratios, "goal": "batch >= 0.8x classify with start-up, >= 0.95x without",
            "projection": projection, "runs": runs}


if __name__ == "__main__":
    main()
