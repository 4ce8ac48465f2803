#!/usr/bin/env python
"""Folders at engine speed: `tumor-edge classify FOLDER` of 1,000 scans against the engine's own
images/s at the same batch size and threads.

    python -m benchmarks.folder_throughput --bundle BUNDLE [--count 1000] [--batch-size 4] [--threads 2]

Three figures per repeat, each at the same batch size and thread count, in one process per figure:
  engine       onnxruntime alone (the runtime's backend, the file classify picks) over batches of already decoded,
               resized scans: no decoding, no output. The ceiling of what classify can reach.
  stream       `Classifier.iter_predictions` over the files in-process (decode in worker threads beside inference,
               out-of-distribution checks, results in order), timed from the first file to the last result.
  cli          `python -m tumor_edge.cli classify --json --model BUNDLE FOLDER` as users run it, spawn to exit,
               stdout to a file (start-up, decoding, inference, output all in).
  cli-net      the cli figure less the fixed start-up: count / (cli wall - wall of the same classify of one file,
               measured in the same round).
The ratio goal: cli (and stream) images/s >= 90 % of engine images/s. The scans are 512x512 JPEGs of the
runtime's synthetic brain-like generator (no patient data), written once under --workdir. Each figure is the
median of --repeats; the machine's load average is recorded beside them: on a shared machine compare the ratios of
one run, not runs. `--compare TREE` measures another source tree (e.g. `git archive BASE | tar -x -C TREE`) in the
same rounds, figure by figure interleaved with this one, so a burst of load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tumor_edge.machine import load_average

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ENGINE_CHILD = """
import sys, time, json
import numpy as np
from pathlib import Path
from tumor_edge.runtime import BackendOptions, Classifier, decode_file, scale
bundle, folder = sys.argv[1], Path(sys.argv[2])
count, batch, threads = (int(v) for v in sys.argv[3:6])
clf = Classifier.from_bundle(bundle, options=BackendOptions(threads=threads, memory_arena=True))
files = sorted(folder.iterdir())[:count]
pixels = np.stack([decode_file(f, clf.preprocessing).pixels[0][0] for f in files[:64]])
batches = [scale(pixels[(i * batch) % 64:(i * batch) % 64 + batch], clf.preprocessing)
           for i in range(64 // batch)]
for b in batches[:3]:
    clf.backend.run(b)
start = time.perf_counter()
done = 0
while done < count:
    clf.backend.run(batches[(done // batch) % len(batches)])
    done += batch
print(json.dumps({"images": done, "seconds": time.perf_counter() - start, "file": clf.backend.path.name}))
"""

STREAM_CHILD = """
import sys, time, json
from pathlib import Path
from tumor_edge.runtime import BackendOptions, Classifier
bundle, folder, count, batch, threads, workers = (sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]),
                                                  int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
clf = Classifier.from_bundle(bundle, options=BackendOptions(threads=threads, memory_arena=True))
files = sorted(folder.iterdir())[:count]
for _ in clf.iter_predictions(files[:2 * batch], batch_size=batch, workers=workers):
    pass
start = time.perf_counter()
n = sum(1 for p in clf.iter_predictions(files, batch_size=batch, workers=workers) if p.ok)
print(json.dumps({"images": n, "seconds": time.perf_counter() - start}))
"""


def make_scans(folder: Path, count: int, size: int) -> Path:
    """`count` JPEG scans of size x size (quality 92) in `folder`, made once."""
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have >= count:
        return folder
    from PIL import Image

    from tumor_edge.runtime import brain_blobs

    for start in range(have, count, 64):
        n = min(64, count - start)
        for i, image in enumerate(brain_blobs(start + 1, n, size, size)):
            Image.fromarray(image).save(folder / f"scan_{start + i:05d}.jpg", quality=92)
    return folder


def rusage_run(cmd: list[str], env: dict[str, str], stdout) -> tuple[float, float, int]:
    """(wall s, child CPU s, exit code) of one fresh process (CPU from wait4)."""
    start = time.perf_counter()
    # cwd outside any source tree: `-m` and `-c` put the working folder first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, cwd=env["TMPDIR"])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def child_json(code: str, args: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """A `python -c code args` child's JSON line and its CPU seconds."""
    out_path = Path(env["TMPDIR"]) / "child.json"
    with open(out_path, "w") as out:
        _, cpu, _ = rusage_run([sys.executable, "-c", code, *args], env, out)
    return json.loads(out_path.read_text().strip().splitlines()[-1]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-folder"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--scan-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="classify's default is 4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="classify's default is 2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another source tree measured in the same rounds (e.g. the baseline's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    folder = make_scans(args.workdir / f"scans{args.scan_size}", args.count, args.scan_size)
    trees = {"this": ROOT, **{f"cmp{i}": Path(p).resolve() for i, p in enumerate(args.compare, 1)}}
    envs = {name: dict(os.environ, PYTHONPATH=str(tree), TMPDIR=str(args.workdir),
                       TUMOR_EDGE_CACHE_DIR=str(args.workdir / f"cache-{name}")) for name, tree in trees.items()}
    common = [str(args.bundle), str(folder), str(args.count), str(args.batch_size), str(args.threads)]
    one_file = str(next(folder.iterdir()))
    cli = [sys.executable, "-m", "tumor_edge.cli", "classify", "--json", "--no-progress", "--model", str(args.bundle),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workers", str(args.workers)]
    for env in envs.values():  # one classify first: the device's optimised-model cache entry every figure uses
        subprocess.run([*cli, one_file], env=env, check=True, capture_output=True, cwd=args.workdir)
    rows: dict[str, list[dict]] = {"engine": []}
    for name in trees:
        rows.update({f"{name}:stream": [], f"{name}:cli": [], f"{name}:cli-net": []})
    loads = [load_average()]
    for _ in range(args.repeats):  # round robin: a burst of load hits every figure alike
        data, cpu = child_json(ENGINE_CHILD, common, envs["this"])
        rows["engine"].append({"images_per_s": data["images"] / data["seconds"], "cpu_s": cpu, "file": data["file"]})
        for name, env in envs.items():
            data, cpu = child_json(STREAM_CHILD, [*common, str(args.workers)], env)
            rows[f"{name}:stream"].append({"images_per_s": data["images"] / data["seconds"], "cpu_s": cpu})
        for name, env in envs.items():
            with open(args.workdir / "classify1.jsonl", "w") as out:
                wall1, _, _ = rusage_run([*cli, one_file], env, out)
            with open(args.workdir / "classify.jsonl", "w") as out:
                wall, cpu, _ = rusage_run([*cli, str(folder)], env, out)
            lines = len((args.workdir / "classify.jsonl").read_text().splitlines())
            rows[f"{name}:cli"].append({"images_per_s": args.count / wall, "wall_s": wall, "cpu_s": cpu,
                                        "lines": lines})
            rows[f"{name}:cli-net"].append({"images_per_s": args.count / max(wall - wall1, 1e-9),
                                            "one_file_wall_s": wall1})
        loads.append(load_average())
    summary = {k: round(statistics.median(r["images_per_s"] for r in v), 1) for k, v in rows.items()}
    cpu_per_image = {k: round(statistics.median(r["cpu_s"] for r in v) / args.count * 1e3, 2)
                     for k, v in rows.items() if v and "cpu_s" in v[0]}
    engine = summary["engine"]
    from tumor_edge.machine import host

    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host(),
        "trees": {k: str(v) for k, v in trees.items()},
        "bundle": str(args.bundle), "file": rows["engine"][0]["file"], "count": args.count,
        "scan": f"{args.scan_size}x{args.scan_size} JPEG q92", "batch_size": args.batch_size,
        "threads": args.threads, "workers": args.workers, "repeats": args.repeats, "load_average": loads,
        "images_per_s": summary,
        "cpu_ms_per_image": cpu_per_image,
        "of_engine": {k: round(v / engine, 3) for k, v in summary.items() if k != "engine"},
        "goal": "cli images/s >= 0.90 x engine images/s",
        "met": summary["this:cli"] >= 0.9 * engine,
        "runs": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

if __name__ == "__main__":
    main()
