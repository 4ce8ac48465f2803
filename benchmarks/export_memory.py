"""Peak memory and time of `tumor-edge export`, whole process tree, per step (goal: <= 3 GB, <= 3 min at 299 px).

Makes (once, under --work) a run folder holding a random-weight InceptionV3 classifier at --image-size built by
the product's own `build_classifier`, with a few synthetic images for calibration, validation and parity; then
runs `tumor-edge export` on it as a child process and samples, every --interval seconds, the resident memory of
that process and of every process it starts (the sum of VmRSS over the tree: shared library pages count once per
process, so the figure errs high). Export logs each step's start and end (logger `tumor_edge.export`), so each
sample is charged to the step running at the time and to the process it was taken from.

Random weights make parity meaningless (int8 of an untrained network may well "fail" it): the export's exit
status 3 (parity failed) still counts as a finished run here, since the memory and time are what is measured.

    python -m benchmarks.export_memory --work /tmp/export-mem                    # default options
    python -m benchmarks.export_memory --work /tmp/export-mem -- --int8 --fp16   # every format

Prints one JSON object (peaks in MB, wall seconds, and the CPU seconds of the whole process tree, which a loaded
machine does not inflate) and, with --json, also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.proctree import rss, tree_pids

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
STEP_LINE = re.compile(r"export step (?P<step>\S+) (?P<what>start|done|failed)")
# The TensorFlow worker's own account of each job (export/plan.py): wall and CPU seconds, its RSS at the end.
JOB_LINE = re.compile(r"export job (?P<job>\S+) (?:done|failed) in (?P<s>[\d.]+) s \(CPU (?P<cpu>[\d.]+) s; "
                      r"worker RSS (?P<rss>\S+) MB at its end, (?P<after>\S+) MB released\)")


# ------------------------------------------------------------------------------------------------ the inputs


def make_images(root: Path, per_class: int, test_per_class: int, size: int, seed: int = 0) -> None:
    """ROOT/Training/<class>/*.png and ROOT/Testing/<class>/*.png: smooth noise with a class-placed blob.
    Content does not matter for memory; real decodable files of a realistic size do."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, count in (("Training", per_class), ("Testing", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cy, cx = (size // 4 + (label // 2) * size // 2, size // 4 + (label % 2) * size // 2)
                blob = 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
                img = np.clip(rng.normal(60, 20, (size, size)) + blob, 0, 255).astype(np.uint8)
                Image.fromarray(np.stack([img] * 3, -1)).save(folder / f"{i:03d}.png")


def make_run(work: Path, image_size: int, per_class: int, test_per_class: int) -> Path:
    """A run folder with an untrained classifier, made in this process (call it in a child: TensorFlow)."""
    from tumor_edge.contracts.preprocessing import Preprocessing
    from tumor_edge.contracts.run_folder import RunConfig, RunFolder
    from tumor_edge.data.dataset import discover, stratified_split, write_split
    from tumor_edge.train.model import build_classifier

    data, run = work / "data", RunFolder(work / f"run{image_size}")
    if run.is_run():
        return run.path
    if not (data / "Training").is_dir():
        make_images(data, per_class, test_per_class, size=max(image_size, 64))
    run.path.mkdir(parents=True, exist_ok=True)
    import keras

    keras.utils.set_random_seed(0)
    build_classifier(len(CLASSES), image_size, weights=None).save(run.model)
    index = discover(data)
    train, val = stratified_split(index.train, 0.25, 0)
    write_split(run.split, data, index.classes, {"train": train, "val": val, "test": index.test}, 0, 0.25)
    RunConfig(classes=list(CLASSES), preprocessing=Preprocessing(image_size, image_size, "bilinear", "none"),
              data_root=str(data.resolve()), extra={"note": "random weights: memory benchmark stand-in"}
              ).write(run.config)
    return run.path


# ------------------------------------------------------------------------------------------------ sampling


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    if "multiprocessing" in text or "spawn_main" in text:
        return "child (multiprocessing)"
    return "export (main)" if "tumor_edge" in text or "tumor-edge" in text else text[:60]


class Sampler:
    """Peak resident memory of a process tree, by step and by process."""

    def __init__(self, root_pid: int, interval: float):
        self.root, self.interval = root_pid, interval
        self.step = "start-up"
        self.peak = 0
        self.by_step: dict[str, int] = {}
        self.by_process: dict[str, int] = {}
        self.max_processes = 1
        self.timeline: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = {pid: rss(pid) for pid in tree_pids(self.root)}
            total = sum(sizes.values())
            step = self.step
            self.peak = max(self.peak, total)
            self.by_step[step] = max(self.by_step.get(step, 0), total)
            self.max_processes = max(self.max_processes, sum(1 for s in sizes.values() if s))
            for pid, size in sizes.items():
                name = _name(pid)
                self.by_process[name] = max(self.by_process.get(name, 0), size)
            self.timeline.append((round(time.perf_counter() - self._t0, 1), total, step))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


def run_export(run_dir: Path, bundle: Path, options: list[str], interval: float) -> dict:
    command = [sys.executable, "-c",
               "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr, "
               "format='%(message)s'); from tumor_edge.cli import main; main()",
               "export", str(run_dir), "--out", str(bundle), "--force", "--quiet", *options]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = Sampler(proc.pid, interval)
    steps: dict[str, float] = {}
    jobs: dict[str, dict] = {}
    started: dict[str, float] = {}
    tail: list[str] = []
    for line in proc.stderr:
        tail = (tail + [line.rstrip()])[-30:]
        job = JOB_LINE.search(line)
        if job:
            jobs[job["job"]] = {"seconds": float(job["s"]), "cpu_seconds": float(job["cpu"]),
                                "rss_end_mb": job["rss"], "rss_after_release_mb": job["after"]}
        match = STEP_LINE.search(line)
        if match:
            now = time.perf_counter() - t0
            if match["what"] == "start":
                sampler.step, started[match["step"]] = match["step"], now
            else:
                steps[match["step"]] = round(now - started.get(match["step"], now), 1)
                sampler.step = f"after {match['step']}"
    stdout = proc.stdout.read()
    proc.wait()
    seconds = time.perf_counter() - t0
    sampler.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the export and every child it waited for
    cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    mb = 1 << 20
    return {
        "options": options, "exit_code": proc.returncode, "seconds": round(seconds, 1),
        # CPU time of the whole tree: what the wall time would be on one free core, whatever else runs beside.
        "cpu_seconds": round(cpu_seconds, 1),
        "peak_rss_mb": round(sampler.peak / mb), "processes_at_once": sampler.max_processes,
        "peak_by_step_mb": {k: round(v / mb) for k, v in sampler.by_step.items()},
        "step_seconds": steps,
        "worker_jobs": jobs,
        "peak_by_process_mb": {k: round(v / mb) for k, v in sampler.by_process.items()},
        "timeline_mb": [(t, round(v / mb), s) for t, v, s in sampler.timeline[:: max(1, int(5 / interval))]],
        "stdout_tail": stdout.strip().splitlines()[-12:],
        "stderr_tail": tail if proc.returncode not in (0, 3) else tail[-3:],
    }


def _int8_seconds(bundle: Path) -> dict:
    """Where the int8 converters spent their time, from the reports they leave in the bundle's metadata."""
    try:
        metrics = json.loads((bundle / "metadata.json").read_text()).get("metrics", {})
    except (OSError, ValueError):
        return {}
    return {k: v["seconds"] for k, v in metrics.items() if isinstance(v, dict) and isinstance(v.get("seconds"), dict)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="Folder for the run, images and bundle (reused).")
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--per-class", type=int, default=12, help="Training images per class.")
    parser.add_argument("--test-per-class", type=int, default=5, help="Test images per class.")
    parser.add_argument("--interval", type=float, default=0.2, help="Sampling period in seconds.")
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    parser.add_argument("--make-run-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("export_options", nargs="*", help="After --: options passed to `tumor-edge export`.")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.make_run_only:
        print(make_run(args.work, args.image_size, args.per_class, args.test_per_class))
        return 0
    # The run is made in a child so that this process (the sampler) stays free of TensorFlow.
    made = subprocess.run([sys.executable, "-m", "benchmarks.export_memory", "--work", str(args.work),
                           "--image-size", str(args.image_size),
                           "--per-class", str(args.per_class), "--test-per-class", str(args.test_per_class),
                           "--make-run-only"], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if made.returncode != 0:
        sys.stderr.write(made.stderr[-3000:])
        return 1
    run_dir = Path(made.stdout.strip().splitlines()[-1])
    bundle = args.work / f"bundle{args.image_size}"
    result = run_export(run_dir, bundle, args.export_options, args.interval)
    result["int8_seconds"] = _int8_seconds(bundle)
    from tumor_edge.machine import load_average, machine_info

    info = machine_info()
    result.update({"image_size": args.image_size, "cpu": info.get("cpu_model") or info.get("cpu"),
                   "load_average": load_average()})
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["exit_code"] in (0, 3) else 1


if __name__ == "__main__":
    raise SystemExit(main())
