"""Does training memory grow with the dataset? Peak RSS of `tumor-edge train` on N and 10*N images.

    python -m benchmarks.training_memory [--images 1800] [--factor 10] [--image-size 96] [--seconds 300]
        [--tree /work/main] [--out benchmarks/results/training-memory]

Generates two toy datasets (tests/toydata.py: N and factor*N images, 80 % Training) once, then runs
`tumor-edge train` on each from scratch and samples the process's RSS from start until `--seconds` after the
fitting starts (the "phase 1:" line; everything that scales with the dataset, decoding and the input
pipeline, is allocated before it, and the seconds after it cover tracing and the first steps), then stops
it. `--tree DIR` runs another checkout's code (e.g. the last release) for a before/after comparison on the
same machine and load. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.demo_memory import PeakSampler, gib


def make_data(root: Path, images: int) -> Path:
    if (root / "Testing").is_dir():
        return root
    from tests.toydata import make_toy_dataset

    per_class = images // 4
    return make_toy_dataset(root, train_per_class=int(per_class * 0.8), test_per_class=per_class // 5, size=96,
                            seed=1)


def measure(data: Path, tree: Path, image_size: int, seconds: float, out_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-u", "-m", "tumor_edge.cli", "train", str(data), "--out", str(out_dir), "--force",
           "--weights", "none", "--image-size", str(image_size), "--epochs", "1", "--batch-size", "16",
           "--no-augment"]
    log = out_dir.with_suffix(".log")
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tree)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        fit_started = None
        try:
            while proc.poll() is None:
                time.sleep(1)
                if fit_started is None and "phase 1:" in log.read_text(errors="replace"):
                    fit_started = time.perf_counter()
                if fit_started is not None and time.perf_counter() - fit_started > seconds:
                    break
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
            sampler.stop()
    return {"images": sum(1 for p in data.rglob("*.jpg")), "peak_rss_gib": gib(sampler.peak_tree),
            "seconds_observed": round(time.perf_counter() - t0, 1), "fit_reached": fit_started is not None,
            "finished": proc.returncode == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1800, help="the demo's: 450 per class")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tumor-edge-training-memory"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training-memory"))
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()
    for n in (args.images, args.images * args.factor):
        data = make_data(args.work / f"data-{n}", n)
        rows.append(measure(data, args.tree.resolve(), args.image_size, args.seconds, args.work / f"run-{n}"))
        print(rows[-1], flush=True)
    record = {"tree": str(args.tree.resolve()), "image_size": args.image_size, "rows": rows,
              "ratio_peak_10x_over_1x": round(rows[1]["peak_rss_gib"] / max(rows[0]["peak_rss_gib"], 1e-9), 2),
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = [f"# Training memory vs dataset size ({time.strftime('%Y-%m-%d')}, code: {record['tree']})", "",
          "| images | peak RSS (GiB) | reached fit |", "|---|---|---|",
          *[f"| {r['images']} | {r['peak_rss_gib']} | {r['fit_reached']} |" for r in rows], "",
          f"ratio 10x/1x: {record['ratio_peak_10x_over_1x']}; load average before/after {record['load_before']} / "
          f"{record['load_after']} on {os.cpu_count()} CPUs"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
