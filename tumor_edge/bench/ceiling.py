"""The machine's float32 matrix-multiply rate (GMAC/s): the ceiling each format's achieved rate is set against.

A large square numpy matmul runs through the BLAS numpy was built with. BLAS fixes its thread count when it is
loaded, so each thread count is measured in a fresh process with the thread variables set (`python -m
tumor_edge.bench.ceiling --threads N`), which also keeps the harness's own process clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Ceiling:
    threads: int
    size: int  # n of the n x n x n float32 matmul
    runs: int
    median_gmacs: float  # n^3 multiply-accumulates per matmul / median time
    best_gmacs: float

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_rate(size: int = 2048, min_seconds: float = 1.5, min_runs: int = 5) -> tuple[float, float, int]:
    """(median, best) GMAC/s of a float32 n x n matmul in this process, and the number of timed runs."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: BLAS thread pool start, page faults
    macs = float(size) ** 3
    rates: list[float] = []
    spent = 0.0
    while len(rates) < min_runs or spent < min_seconds:
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        elapsed = time.perf_counter() - start
        spent += elapsed
        rates.append(macs / elapsed / 1e9)
    return statistics.median(rates), max(rates), len(rates)


def measure_ceiling(threads: int, size: int = 2048, min_seconds: float = 1.5, timeout: float = 120.0) -> Ceiling:
    """Run the matmul in a child process limited to `threads` BLAS threads."""
    env = dict(os.environ)
    for var in THREAD_VARIABLES:
        env[var] = str(threads)
    cmd = [sys.executable, "-m", "tumor_edge.bench.ceiling", "--threads", str(threads), "--size", str(size),
           "--seconds", str(min_seconds)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"matmul ceiling child failed: {proc.stderr.strip().splitlines()[-1:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Ceiling(**data)


def merge_ceilings(passes: list[Ceiling]) -> list[Ceiling]:
    """One ceiling per thread count from several passes (before and after the formats): the best rates seen.

    Load from other processes only ever slows a matmul down, so the fastest pass is the closest to what the
    machine can do; that is the ceiling a format's achieved rate is set against.
    """
    out: dict[int, Ceiling] = {}
    for c in passes:
        prev = out.get(c.threads)
        out[c.threads] = c if prev is None else Ceiling(c.threads, c.size, prev.runs + c.runs,
                                                         max(prev.median_gmacs, c.median_gmacs),
                                                         max(prev.best_gmacs, c.best_gmacs))
    return [out[t] for t in sorted(out)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="float32 matmul GMAC/s (run with BLAS thread variables set)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args(argv)
    median, best, runs = matmul_rate(args.size, args.seconds)
    print(json.dumps(Ceiling(args.threads, args.size, runs, median, best).to_dict()))


if __name__ == "__main__":
    main()
