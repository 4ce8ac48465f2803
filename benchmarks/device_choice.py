"""Does `classify` after `verify` run a file within 15 % of the fastest present file's p50?

The device picks the file it runs by a few seconds of timing (tumor_edge.runtime.choice). This script checks that
choice against a longer, independent measurement, as a user would meet it:
1. `tumor-edge verify --threads T BUNDLE` in a fresh cache (it times the files and records the choice);
2. `tumor-edge classify --json --threads T --model BUNDLE scan.png`: the file and engine its row names;
3. `tumor-edge bench --model BUNDLE --threads T --batch 1` (no Keras, no cold start, no ceilings): the p50 of every
   present file, interleaved run by run so load hits all alike;
4. the chosen file's p50 against the fastest one's: goal <= 1.15x.

Writes a Markdown table (and the raw bench record) under benchmarks/results/, naming the CPU and load average.

    python -m benchmarks.device_choice BUNDLE [--threads 2] [--seconds 10] [--out benchmarks/results/NAME.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.15


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="bench's timed seconds per file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from PIL import Image

    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.contracts.formats import BY_FILE
    from tumor_edge.machine import load_average, machine_info, machine_summary
    from tumor_edge.runtime import brain_blobs

    cli = str(Path(sys.executable).parent / "tumor-edge")
    metadata = BundleMetadata.read(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUMOR_EDGE_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("TUMOR_EDGE_NO_MEASURE", None)
        t0 = time.perf_counter()
        verify = run([cli, "verify", "--threads", str(args.threads), str(args.bundle)], env)
        verify_s = time.perf_counter() - t0
        choice_line = next((line for line in verify.stdout.splitlines() if line.startswith("device choice:")), "")
        scan = Path(tmp) / "scan.png"
        Image.fromarray(brain_blobs(7, 1, metadata.preprocessing.height, metadata.preprocessing.width)[0]).save(scan)
        row = json.loads(run([cli, "classify", "--json", "--threads", str(args.threads), "--model", str(args.bundle),
                              str(scan)], env).stdout.splitlines()[0])
        record_path = Path(tmp) / "bench.json"
        present = [name for name in metadata.models if (args.bundle / name).is_file() and name in BY_FILE]
        run([cli, "bench", "--model", str(args.bundle), "--formats", ",".join(BY_FILE[n].key for n in present),
             "--threads", str(args.threads), "--batch", "1", "--no-keras", "--cold-runs", "0", "--no-ceiling",
             "--min-seconds", str(args.seconds), "--quiet", "--json", str(record_path)], env)
        bench = json.loads(record_path.read_text())
    p50 = {r["file"]: r["p50_ms"] for r in bench["results"] if r.get("p50_ms") is not None}
    fastest = min(p50, key=p50.get)
    chosen = row["model_file"]
    ratio = p50[chosen] / p50[fastest]
    cpu = machine_summary(machine_info())
    lines = [f"# Device choice check: {args.bundle.name}, {args.threads} threads",
             "", f"Machine: {cpu}; load average at the end {load_average()}.", "",
             f"- verify ({verify_s:.1f} s in all) recorded: `{choice_line}`",
             f"- classify ran **{chosen}** ({row['engine']})",
             f"- bench, batch 1, >= {args.seconds:g} s per file, interleaved:", "",
             "| file | p50 ms | vs fastest |", "|---|---|---|"]
    lines += [f"| {name}{' (chosen)' if name == chosen else ''} | {ms:.3f} | {ms / p50[fastest]:.2f}x |"
              for name, ms in sorted(p50.items(), key=lambda kv: kv[1])]
    verdict = "met" if ratio <= GOAL else "NOT met"
    lines += ["", f"Goal: the chosen file within {GOAL:.2f}x of the fastest: {ratio:.2f}x, {verdict}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
