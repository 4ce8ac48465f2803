"""Peak resident memory and wall time of `tumor-edge demo`, the whole process tree (the demo runs its heavy
stages in child processes), sampled from /proc every 0.2 s.

    python -m benchmarks.demo_memory [--workdir DIR] [--profile cpu] [--out benchmarks/results/demo-memory]

Writes <out>.json and <out>.md: wall time, peak RSS of the tree and of the demo's own process, the stage times
the demo reported, its accuracy, the machine's load average before and after (the machine is shared: give the
load beside any time). Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.proctree import tree_rss


class PeakSampler(threading.Thread):
    """Samples a process tree's RSS until stopped; keeps the peaks and a coarse timeline."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_tree = self.peak_root = 0
        self.timeline: list[tuple[float, int]] = []
        self.samples: list[tuple[float, int]] = []  # every sample, for the per-stage peaks
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        last = -10.0
        while not self._halt.is_set():
            tree, root = tree_rss(self.pid)
            self.peak_tree, self.peak_root = max(self.peak_tree, tree), max(self.peak_root, root)
            now = time.perf_counter() - self._t0
            self.samples.append((now, tree))
            if now - last >= 5:
                self.timeline.append((round(now, 1), tree))
                last = now
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-demo-memory"))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo-memory"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--from-stage", help="Resume a finished demo in --workdir from this stage (its marker and "
                        "the later ones are removed; earlier stages are reused): measures export, classify and "
                        "bench without training again.")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "tumor_edge.cli", "demo", "--workdir", str(args.workdir), "--profile",
           args.profile]
    if args.from_stage:
        from tumor_edge.demo.pipeline import STAGE_DIR, STAGES

        names = [s.name for s in STAGES]
        for name in names[names.index(args.from_stage):]:
            (args.workdir / STAGE_DIR / f"{name}.json").unlink(missing_ok=True)
    else:
        cmd.append("--force")
    load_before = os.getloadavg()
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, started_epoch = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    try:
        code = proc.wait(timeout=args.timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the demo and every process it waited for
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    record = {"command": " ".join(cmd[1:]), "exit_code": code, "wall_s": round(wall, 1),
              # CPU time of the whole tree: on a shared machine the wall time says as much about the others' load.
              "cpu_s": round(cpu, 1),
              "peak_rss_tree_gib": gib(sampler.peak_tree), "peak_rss_demo_process_gib": gib(sampler.peak_root),
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              # oneDNN's instruction-set cap: AVX2 lets an AVX-512 machine estimate a CPU without it.
              "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "timeline_s_gib": [(t, gib(r)) for t, r in sampler.timeline]}
    try:
        from tumor_edge.machine import machine_info

        keep = ("cpu_model", "logical_cpus", "int8_acceleration", "memory_gib")
        record["machine"] = {k: v for k, v in machine_info().items() if k in keep}
    except Exception as err:  # the figures matter more than the machine line
        record["machine"] = {"error": str(err)}
    # Stage times and peaks: each stage's marker is written when it ends; the tree's peak between two ends is
    # that stage's (the demo runs its stages one after another).
    ends = []
    for marker in sorted((args.workdir / ".stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(marker.read_text())
        record[f"{marker.stem}_s"] = data.get("seconds")
        ends.append((marker.stem, marker.stat().st_mtime - started_epoch))
        if marker.stem == "train":
            record["accuracy"] = data["result"].get("accuracy")
            record["macro_auc"] = data["result"].get("macro_auc")
        if marker.stem == "export":
            record["parity_verdict"] = data["result"].get("parity_verdict")
    begin, peaks = 0.0, {}
    for stage, end in [(s, e) for s, e in ends if e > 0]:  # stages this invocation ran (not reused ones)
        peaks[stage] = gib(max((r for t, r in sampler.samples if begin <= t <= end), default=0))
        begin = end
    record["peak_rss_tree_gib_by_stage"] = peaks
    with contextlib.suppress(OSError, ValueError):
        record["fit_s"] = json.loads((args.workdir / "run" / "config.json").read_text()).get("fit_seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = [f"# `tumor-edge demo` memory and time ({time.strftime('%Y-%m-%d')})", "",
          f"- command: `{record['command']}` (exit {code})",
          f"- wall time: {wall / 60:.1f} min, CPU time of the tree {cpu / 60:.1f} min (stages, s: " + ", ".join(
              f"{k} {record.get(f'{k}_s')}" for k in record["peak_rss_tree_gib_by_stage"]) +
          f"; of train, model.fit {record.get('fit_s')} s)",
          f"- peak RSS, whole process tree: {record['peak_rss_tree_gib']} GiB; the demo's own process: "
          f"{record['peak_rss_demo_process_gib']} GiB",
          f"- peak RSS of the tree by stage, GiB: {record['peak_rss_tree_gib_by_stage']}",
          f"- held-out accuracy: {record.get('accuracy')} (macro AUC {record.get('macro_auc')}); export parity: "
          f"{record.get('parity_verdict')}",
          f"- load average before/after: {record['load_before']} / {record['load_after']} on {os.cpu_count()} CPUs",
          f"- machine: {record['machine']}; ONEDNN_MAX_CPU_ISA={record['onednn_max_cpu_isa'] or 'unset'}"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
