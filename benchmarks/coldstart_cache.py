#!/usr/bin/env python
"""Cold start of `tumor-edge classify` with the device's optimised-model cache: a fresh process from
spawn to exit for one image, its peak RSS and its CPU time.

    python -m benchmarks.coldstart_cache                          # the stand-in bundle, built once, then measured
    python -m benchmarks.coldstart_cache --compare /tmp/base-tree  # also another source tree, in the same rounds
    python -m benchmarks.coldstart_cache --importtime              # plus the slowest imports of one classify

The model is the standard suite's stand-in (benchmarks/standin.py: the project's own 299 px classifier with random
weights, exported by `tumor-edge export --int8 --fp16`), run as users run it: `classify --model BUNDLE scan.jpg`
picks the bundle's int8 ONNX model. It is built once with TensorFlow in a child process under --workdir; the
processes measured never import TensorFlow.

Cases, each a fresh process (round robin over --runs, so a burst of load on a shared machine hits every case
alike; each run gets a cache in the state the case names):
  cli/second        `python -m tumor_edge.cli classify`, the cache entry written by an earlier run (the goal:
                    <= 0.25 s and <= 90 MB on an idle machine)
  cli/no-cache      the same with TUMOR_EDGE_NO_CACHE=1: onnxruntime optimises the graph at every load
  cli/first         an empty cache: optimise, write the entry, classify
  api/second        `Classifier.from_bundle(...).predict(...)` in `python -c`, cache warm
  api/second-nohash the same without the sha256 check of the model file (what the check costs)
  floor/onnxruntime onnxruntime alone loading this tree's cache entry and running once on zeros (the floor)
  floor/ort+decode+hash  that, plus what any classify of a JPEG must add: Pillow decoding and resizing the scan
                    and hashlib's sha256 of the model file (no tumor-edge code)
Wall is spawn to exit; CPU is the child's user+sys time (getrusage via wait4), which a loaded machine inflates far
less than wall; peak RSS is the reaped child's ru_maxrss. Each row gives the 1-minute load average (median over
its runs) beside its figures: a wall goal is for an idle machine, so compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SIZE = 299

API_CHILD = """
import sys
from tumor_edge.runtime import BackendOptions, Classifier
clf = Classifier.from_bundle(sys.argv[1], options=BackendOptions(verify_hashes=sys.argv[3] == "1"))
print(clf.predict(sys.argv[2]).label, clf.backend.source_kind, flush=True)
"""

# The floor under any tumor-edge code: onnxruntime alone loading this tree's cache entry and running one image.
# onnxruntime loading the cached optimised model (argv[1]: the cache folder) as the runtime does
ORT_SESSION = """
entry = next(Path(sys.argv[1]).rglob("model.onnx"))
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
so.enable_cpu_mem_arena = False
so.enable_mem_pattern = False
session = ort.InferenceSession(str(entry), so, providers=["CPUExecutionProvider"])
"""

ORT_CHILD = """
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
""" + ORT_SESSION + """
out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 299, 299, 3), np.float32)})
print("scores", out[0].shape, flush=True)
"""

# The floor of what `classify scan.jpg` must do beyond that: decode and resize the scan with Pillow (the floor above
# feeds zeros) and check the bundle's model file against its sha256 (hashlib, i.e. OpenSSL), nothing of tumor-edge.
ORT_DECODE_HASH_CHILD = """
import sys, hashlib
from pathlib import Path
import numpy as np, onnxruntime as ort
from PIL import Image
digest = hashlib.sha256()
with open(sys.argv[2], "rb") as fh:
    for block in iter(lambda: fh.read(1 << 18), b""):
        digest.update(block)
""" + ORT_SESSION + """
pixels = np.asarray(Image.open(sys.argv[3]).convert("RGB").resize((299, 299), Image.Resampling.BILINEAR))
out = session.run(None, {session.get_inputs()[0].name: pixels[None].astype(np.float32)})
print("scores", out[0].shape, digest.hexdigest()[:8], flush=True)
"""

# case -> (how the child runs, cache state before each run, hash check on)
CASES: dict[str, tuple[str, str, bool]] = {
    "cli/second": ("cli", "warm", True),
    "cli/no-cache": ("cli", "off", True),
    "cli/first": ("cli", "empty", True),
    "api/second": ("api", "warm", True),
    "api/second-nohash": ("api", "warm", False),
    "floor/imports": ("imports", "warm", False),
    "floor/onnxruntime": ("ort", "warm", False),
    "floor/ort+decode+hash": ("ort+decode+hash", "warm", False),
}
FLOOR = ("imports", "ort", "ort+decode+hash")  # measured for the first tree only: no tumor-edge code runs


def build_bundle(workdir: Path) -> Path:
    """The stand-in bundle (benchmarks/standin.py), built in a child so TensorFlow's memory stays there."""
    from benchmarks.standin import bundle_complete

    bundle = workdir / "standin" / "bundle"
    if not bundle_complete(bundle, SIZE):
        subprocess.run([sys.executable, "-m", "benchmarks.coldstart_cache", "--build-only", str(workdir)], check=True)
    return bundle


def scan_image(workdir: Path) -> Path:
    """One 512x512 JPEG slice (the runtime's own synthetic brain-like generator; no patient data)."""
    path = workdir / "scan.jpg"
    if not path.is_file():
        subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; "
                        "from tumor_edge.runtime import brain_blobs; "
                        "Image.fromarray(brain_blobs(7, 1, 512, 512)[0]).save(sys.argv[1], quality=92)", str(path)],
                       check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=path.parent)
    return path


def child_command(how: str, bundle: Path, image: Path, check_hash: bool, cache: Path | None = None) -> list[str]:
    if how == "imports":
        return [sys.executable, "-c", "import numpy, onnxruntime"]
    if how == "ort":
        return [sys.executable, "-c", ORT_CHILD, str(cache)]
    if how == "ort+decode+hash":
        from tumor_edge.contracts.bundle import BundleMetadata

        model = bundle / next(n for n in BundleMetadata.read(bundle).models if n.endswith("int8.onnx"))
        return [sys.executable, "-c", ORT_DECODE_HASH_CHILD, str(cache), str(model), str(image)]
    if how == "cli":
        return [sys.executable, "-m", "tumor_edge.cli", "classify", "--model", str(bundle), str(image)]
    return [sys.executable, "-c", API_CHILD, str(bundle), str(image), "1" if check_hash else "0"]


def one_run(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """A fresh process from spawn to exit; peak RSS and CPU from the kernel's accounting of the reaped child
    (os.wait4). This parent stays small (no model, no TensorFlow): Linux carries a parent's RSS high-water mark
    into its children's ru_maxrss across fork + exec. `cwd` must not be a source tree: `python -m` and `-c` put
    the working folder first on sys.path, ahead of the PYTHONPATH that picks the tree measured."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode:
        raise SystemExit(f"child failed ({' '.join(cmd[:5])} ...): {err.decode()[-2000:]}")
    return {"wall": wall, "cpu": rusage.ru_utime + rusage.ru_stime, "peak_mb": rusage.ru_maxrss / 1024,
            "load": load, "out": out.decode().strip().splitlines()[-1:]}


def measure(trees: dict[str, Path], bundle: Path, image: Path, workdir: Path, runs: int,
            cases: list[str]) -> dict[str, dict]:
    base = clean_env()
    first = next(iter(trees))
    wanted = [(tree, case) for tree in trees for case in cases if tree == first or CASES[case][0] not in FLOOR]
    results: dict[str, list[dict]] = {f"{tree}:{case}": [] for tree, case in wanted}
    for round_ in range(runs + 1):  # round 0 only warms: bytecode written, files in the page cache
        for tree, source in trees.items():
            cache = workdir / f"cache-{tree}"
            for case in [c for t, c in wanted if t == tree]:
                how, state, check = CASES[case]
                env = dict(base, PYTHONPATH=str(source), TUMOR_EDGE_CACHE_DIR=str(cache))
                if state == "off":
                    env["TUMOR_EDGE_NO_CACHE"] = "1"
                if state == "empty":
                    shutil.rmtree(cache, ignore_errors=True)
                cmd = child_command(how, bundle, image, check, cache)
                if state == "warm" and not any(cache.rglob("*.onnx")):
                    one_run(child_command("cli", bundle, image, True), env, workdir)  # prime the cache
                sample = one_run(cmd, env, workdir)
                if round_:
                    results[f"{tree}:{case}"].append(sample)
    return {name: summarize(rows) for name, rows in results.items()}


def clean_env() -> dict[str, str]:
    """This environment without what would bias a child: tumor-edge's own settings, thread-count variables (the
    CLI sets its own defaults) and PYTHONDONTWRITEBYTECODE (a user's install has bytecode; compiling every
    module at every start would be measured instead)."""
    drop = ("TUMOR_EDGE_", "OPENBLAS_", "OMP_", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def summarize(rows: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in rows) for k in ("wall", "cpu", "peak_mb", "load")}
    out.update(wall_min=min(r["wall"] for r in rows), cpu_min=min(r["cpu"] for r in rows),
               peak_max=max(r["peak_mb"] for r in rows), runs=len(rows), out=rows[-1]["out"])
    return out


def import_top(source: Path, bundle: Path, image: Path, workdir: Path, top: int) -> list[tuple[float, float, str]]:
    """(self ms, cumulative ms, module) of the slowest imports of one warm-cache classify (-X importtime)."""
    env = dict(clean_env(), PYTHONPATH=str(source), TUMOR_EDGE_CACHE_DIR=str(workdir / "cache-importtime"))
    cmd = [sys.executable, "-X", "importtime", *child_command("cli", bundle, image, True)[1:]]
    subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=workdir)  # warm the cache
    err = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=workdir).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            own, total, name = line[len("import time:"):].split("|")
            rows.append((int(own) / 1000, int(total) / 1000, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-coldstart"),
                        help="where the stand-in is built once and the caches live")
    parser.add_argument("--runs", type=int, default=7, help="processes per case (median reported)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another source tree (e.g. a checkout of the baseline) measured in the same rounds")
    parser.add_argument("--importtime", type=int, default=0, metavar="N",
                        help="also list the N slowest imports (self time) of one classify per tree")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.workdir)
    image = scan_image(args.workdir)
    trees = {"this": ROOT, **{f"cmp{i}": Path(p).resolve() for i, p in enumerate(args.compare, 1)}}
    from tumor_edge.machine import host, load_average

    before = load_average()
    results = measure(trees, bundle, image, args.workdir, args.runs, cases)
    after = load_average()
    machine = host()
    print(f"cold start, `classify` of one 512 px JPEG, stand-in int8 ONNX 299 px; {machine['cpu']} ({machine['isa']}),"
          f" {os.cpu_count()} CPUs; load average {before} -> {after}; median of {args.runs} processes per row")
    for tree, source in trees.items():
        print(f"  {tree}: {source}")
    print(f"{'tree:case':<26} {'wall s':>7} {'min':>6} {'cpu s':>6} {'min':>6} {'peak MB':>8} {'max':>6} "
          f"{'load':>5}  output")
    for name, r in results.items():
        print(f"{name:<26} {r['wall']:7.3f} {r['wall_min']:6.3f} {r['cpu']:6.3f} {r['cpu_min']:6.3f} "
              f"{r['peak_mb']:8.1f} {r['peak_max']:6.1f} {r['load']:5.1f}  {' '.join(r['out'])[:40]}")
    imports = {}
    if args.importtime:
        for tree, source in trees.items():
            imports[tree] = import_top(source, bundle, image, args.workdir, args.importtime)
            print(f"\nslowest imports of one classify, {tree} (self ms, cumulative ms; -X importtime inflates both)")
            for own, total, name in imports[tree]:
                print(f"  {own:7.1f} {total:8.1f}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load_average": [before, after], "trees":
                                         {k: str(v) for k, v in trees.items()}, "results": results,
                                         "imports": imports}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-only":
        from benchmarks.standin import stand_in_bundle

        print(stand_in_bundle(Path(sys.argv[2]) / "standin", SIZE, print)[0])
    else:
        main()
