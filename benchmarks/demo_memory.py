"""Peak resident memory and wall time of `tumor-edge demo`, the whole process tree (the demo runs its heavy
stages in child processes), sampled from /proc every 0.2 s.

    python benchmarks/demo_memory.py [--workdir DIR] [--profile cpu] [--out benchmarks/results/demo-memory]

Writes <out>.json and <out>.md: wall time, peak RSS of the tree and of the demo's own process, the stage times
the demo reported, its accuracy, the machine's load average before and after (the machine is shared: give the
load beside any time). Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS of root and all its descendants, RSS of root alone), bytes."""
    tree, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss(pid)
        stack.extend(tree.get(pid, []))
    return total, _rss(root)


class PeakSampler(threading.Thread):
    """Samples a process tree's RSS until stopped; keeps the peaks and a coarse timeline."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_tree = self.peak_root = 0
        self.timeline: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        last = -10.0
        while not self._halt.is_set():
            tree, root = tree_rss(self.pid)
            self.peak_tree, self.peak_root = max(self.peak_tree, tree), max(self.peak_root, root)
            now = time.perf_counter() - self._t0
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
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "tumor_edge.cli", "demo", "--workdir", str(args.workdir), "--profile",
           args.profile, "--force"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
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
    record = {"command": " ".join(cmd[1:]), "exit_code": code, "wall_s": round(wall, 1),
              "peak_rss_tree_gib": gib(sampler.peak_tree), "peak_rss_demo_process_gib": gib(sampler.peak_root),
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "timeline_s_gib": [(t, gib(r)) for t, r in sampler.timeline]}
    try:
        from tumor_edge.machine import machine_info

        keep = ("cpu_model", "logical_cpus", "int8_acceleration", "memory_gib")
        record["machine"] = {k: v for k, v in machine_info().items() if k in keep}
    except Exception as err:  # the figures matter more than the machine line
        record["machine"] = {"error": str(err)}
    for stage in ("train", "export"):
        marker = args.workdir / ".stages" / f"{stage}.json"
        if marker.is_file():
            data = json.loads(marker.read_text())
            record[f"{stage}_s"] = data.get("seconds")
            if stage == "train":
                record["accuracy"] = data["result"].get("accuracy")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = [f"# `tumor-edge demo` memory and time ({time.strftime('%Y-%m-%d')})", "",
          f"- command: `{record['command']}` (exit {code})",
          f"- wall time: {wall / 60:.1f} min (train {record.get('train_s')} s, export {record.get('export_s')} s)",
          f"- peak RSS, whole process tree: {record['peak_rss_tree_gib']} GiB; the demo's own process: "
          f"{record['peak_rss_demo_process_gib']} GiB",
          f"- held-out accuracy: {record.get('accuracy')}",
          f"- load average before/after: {record['load_before']} / {record['load_after']} on {os.cpu_count()} CPUs",
          f"- machine: {record['machine']}"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
