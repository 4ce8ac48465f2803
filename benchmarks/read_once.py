#!/usr/bin/env python
"""Cold start of a bundle's model when every file is read once and the engine gets those bytes, against a source
tree that hashes the file and lets the engine open it by path (with and without its optimised-model cache).

    python -m benchmarks.read_once --base /work/main --bundles /tmp/b96 /tmp/b299 [--runs 7]

Each bundle is a stand-in (benchmarks/standin.py: the project's classifier with random weights, exported by
`tumor-edge export --int8 --fp16`). Every run is a fresh process doing what `classify` does for one image:
`Classifier.from_bundle(BUNDLE, model_file=FILE).predict(scan.jpg)`, 2 threads. Cases, round robin over --runs so
a burst of load on a shared machine hits every case alike, for each tree ("this": read once, bytes to the engine;
"base": the --base tree):
  TREE/cache-warm    its optimised-model cache filled by an earlier run (ONNX files only)
  TREE/no-cache      TUMOR_EDGE_NO_CACHE=1: onnxruntime optimises the graph at every load
  TREE               LiteRT files (no cache there)
Figures per case: wall spawn to exit, the child's CPU (user+sys, wait4), its peak RSS (ru_maxrss), and inside the
child the seconds `from_bundle` took (open: read, hash, build the session). Medians over runs; the 1-minute load
average beside them, since a shared machine's load inflates wall far more than CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from tumor_edge.runtime import BackendOptions, Classifier
t1 = time.perf_counter()
clf = Classifier.from_bundle(sys.argv[1], model_file=sys.argv[2], options=BackendOptions(threads=2))
t2 = time.perf_counter()
label = clf.predict(sys.argv[3]).label
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "predict_s": t3 - t2, "label": label}))
"""


def scan_image(folder: Path) -> Path:
    """One 512x512 JPEG slice from the runtime's synthetic generator (no patient data)."""
    path = folder / "scan.jpg"
    if not path.is_file():
        from PIL import Image

        from tumor_edge.runtime import brain_blobs

        Image.fromarray(brain_blobs(7, 1, 512, 512)[0]).save(path, quality=92)
    return path


def one_run(tree: Path, bundle: Path, model: str, image: Path, env_extra: dict[str, str], cwd: Path) -> dict:
    """A fresh process; wall, CPU and peak RSS from the kernel's accounting of the reaped child."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", **env_extra)
    env.pop("TUMOR_EDGE_TRUST", None)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle), model, str(image)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({tree}, {bundle.name}/{model}): {err.decode()[-800:]}")
    inner = json.loads(out.decode().strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "load": load, **inner}


def cases(this: Path, base: Path, bundles: list[Path], cache_root: Path) -> list[dict]:
    """Every (tree, bundle, file, environment) measured."""
    found = []
    for bundle in bundles:
        meta = json.loads((bundle / "metadata.json").read_text())
        size = meta["preprocessing"]["height"]
        for name in sorted(meta["models"]):
            precision = meta["models"][name]["precision"]
            if precision == "fp16":
                continue
            onnx = name.endswith(".onnx")
            row = {"size": size, "file": name, "bundle": bundle}
            for label, tree in (("this", this), ("base", base)):
                if onnx:
                    cache = cache_root / f"{label}-{size}-{name}"
                    found.append({**row, "case": f"{label}/cache-warm", "tree": tree,
                                  "env": {"TUMOR_EDGE_CACHE_DIR": str(cache)}})
                    found.append({**row, "case": f"{label}/no-cache", "tree": tree,
                                  "env": {"TUMOR_EDGE_NO_CACHE": "1"}})
                else:
                    found.append({**row, "case": label, "tree": tree, "env": {"TUMOR_EDGE_NO_CACHE": "1"}})
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the source tree to compare with")
    parser.add_argument("--this", type=Path, default=ROOT, help="the source tree measured (default: this one)")
    parser.add_argument("--bundles", type=Path, nargs="+", required=True)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="read-once-") as tmp:
        work = Path(tmp)
        image = scan_image(work)
        todo = cases(args.this.resolve(), args.base.resolve(), [b.resolve() for b in args.bundles], work / "cache")
        for case in todo:  # warm-up: fills each cache, loads each file into the page cache
            one_run(case["tree"], case["bundle"], case["file"], image, case["env"], work)
        runs: dict[int, list[dict]] = {i: [] for i in range(len(todo))}
        for _ in range(args.runs):
            for i, case in enumerate(todo):
                runs[i].append(one_run(case["tree"], case["bundle"], case["file"], image, case["env"], work))
    rows = []
    for i, case in enumerate(todo):
        figures = {k: statistics.median(r[k] for r in runs[i]) for k in ("wall_s", "cpu_s", "peak_mb", "open_s",
                                                                         "load")}
        rows.append({"size": case["size"], "file": case["file"], "case": case["case"], "runs": args.runs,
                     **{k: round(v, 4) for k, v in figures.items()}})
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {args.runs} fresh processes a row, medians")
    print(f"{'size':>4} {'file':<18} {'case':<16} {'open s':>7} {'wall s':>7} {'cpu s':>6} {'peak MB':>8} {'load':>5}")
    for r in rows:
        print(f"{r['size']:>4} {r['file']:<18} {r['case']:<16} {r['open_s']:>7.3f} {r['wall_s']:>7.3f} "
              f"{r['cpu_s']:>6.3f} {r['peak_mb']:>8.1f} {r['load']:>5.2f}")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
