"""The machine's matrix-multiply ceilings (GMAC/s): what each format's achieved rate is set against.

Two ceilings, one per kind of arithmetic a bundle's files run:
- fp32: a large square float32 numpy matmul through the BLAS numpy was built with (sgemm).
- int8: a large square `MatMulInteger` (uint8 x int8 -> int32) through onnxruntime itself, i.e. MLAS's u8s8
  GEMM, the kernel family behind the QLinearConv/QLinearMatMul that a QDQ int8 model becomes on the CPU (VNNI
  dot products where the CPU has them, AMX tiles where onnxruntime uses them). An int8 file's rate set against
  the float32 rate says little (it can exceed 1); against the int8 ceiling it says how much of the machine's
  integer arithmetic the engine reaches.

BLAS and onnxruntime fix their thread pools when they start, so each thread count is measured in a fresh
process with the thread variables set (`python -m tumor_edge.bench.ceiling --threads N`), which also keeps the
harness's own process clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# n of the n x n x n matmuls: 1 GMAC, operands of 1-4 MB (beyond L2), a few ms to ~15 ms a run. Short runs
# matter on a shared machine: the best of many short runs finds the moments the cores were free, while every
# run of a 2048^3 float32 matmul (~0.1-0.3 s) is cut into by other processes' time slices. (Earlier records
# used 2048^3 for the float32 ceiling.)
DEFAULT_SIZE = 1024


@dataclass(frozen=True)
class Ceiling:
    threads: int
    size: int  # n of the n x n x n matmul
    runs: int
    median_gmacs: float  # n^3 multiply-accumulates per matmul / median time
    best_gmacs: float
    precision: str = "fp32"  # "fp32" | "int8": which files it is the ceiling of
    engine: str = "numpy BLAS float32 matmul"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ceiling:
        """Records from before the int8 ceiling carry no precision: they are the float32 one."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _time_rate(call: Callable[[], object], macs: float, min_seconds: float, min_runs: int
               ) -> tuple[float, float, int]:
    call()  # warm-up: thread pool start, page faults, kernel selection
    rates: list[float] = []
    spent = 0.0
    while len(rates) < min_runs or spent < min_seconds:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        spent += elapsed
        rates.append(macs / elapsed / 1e9)
    return statistics.median(rates), max(rates), len(rates)


def matmul_rate(size: int = DEFAULT_SIZE, min_seconds: float = 1.5, min_runs: int = 5,
                threads: int | None = None) -> tuple[float, float, int]:
    """(median, best) GMAC/s of a float32 n x n matmul in this process, and the number of timed runs.

    BLAS threads come from the environment this process started with (`threads` is not used)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    return _time_rate(lambda: np.matmul(a, b, out=out), float(size) ** 3, min_seconds, min_runs)


def int8_matmul_model(size: int) -> bytes:
    """A one-node ONNX model: MatMulInteger(a: uint8 [n, n], b: int8 [n, n]) -> int32 [n, n]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_ceiling",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by every onnxruntime this project supports
    return model.SerializeToString()


def int8_matmul_rate(size: int = DEFAULT_SIZE, min_seconds: float = 1.5, min_runs: int = 5,
                     threads: int | None = None) -> tuple[float, float, int]:
    """(median, best) GMAC/s of onnxruntime's uint8 x int8 n x n MatMulInteger with `threads` intra-op threads
    (as the runtime's BackendOptions set them), and the number of timed runs. Full-range random operands: the
    rate must not depend on zeros."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(int8_matmul_model(size), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8),
             "b": rng.integers(-128, 128, (size, size), dtype=np.int8)}
    return _time_rate(lambda: session.run(None, feeds), float(size) ** 3, min_seconds, min_runs)


# precision -> (what measures it, its rate function, the Python module it needs)
KINDS: dict[str, tuple[str, Callable[..., tuple[float, float, int]], str]] = {
    "fp32": ("numpy BLAS float32 matmul", matmul_rate, "numpy"),
    "int8": ("onnxruntime MatMulInteger uint8 x int8", int8_matmul_rate, "onnx"),
}
PRECISIONS: tuple[str, ...] = tuple(KINDS)


def ceiling_precision(file_precision: str) -> str:
    """Which ceiling a file of this precision is set against: int8 files the int8 one; fp32 and fp16 files the
    float32 one (CPUs without fp16 arithmetic widen fp16 weights and compute in float32)."""
    return file_precision if file_precision in KINDS else "fp32"


@dataclass(frozen=True)
class CeilingRun:
    """One child process's ceilings, and the kinds it could not measure (with why)."""

    ceilings: list[Ceiling]
    unavailable: dict[str, str]


def measure_ceilings(threads: int, precisions: Iterable[str] = PRECISIONS, size: int = DEFAULT_SIZE,
                     min_seconds: float = 1.5, timeout: float = 180.0) -> CeilingRun:
    """Every ceiling kind at `threads`, in one child process whose BLAS and onnxruntime use that many threads."""
    precisions = list(precisions)
    env = dict(os.environ)
    for var in THREAD_VARIABLES:
        env[var] = str(threads)
    cmd = [sys.executable, "-m", "tumor_edge.bench.ceiling", "--threads", str(threads), "--size", str(size),
           "--seconds", str(min_seconds), "--precisions", ",".join(precisions)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"matmul ceiling child failed: {proc.stderr.strip().splitlines()[-1:]}")
    ceilings, unavailable = [], {}
    for line in proc.stdout.strip().splitlines():
        data = json.loads(line)
        if "unavailable" in data:
            unavailable[data["unavailable"]] = data["reason"]
        else:
            ceilings.append(Ceiling.from_dict(data))
    return CeilingRun(ceilings, unavailable)


def merge_ceilings(passes: list[Ceiling]) -> list[Ceiling]:
    """One ceiling per precision and thread count from several passes (before and after the formats): the best
    rates seen.

    Load from other processes only ever slows a matmul down, so the fastest pass is the closest to what the
    machine can do; that is the ceiling a format's achieved rate is set against.
    """
    out: dict[tuple[str, int], Ceiling] = {}
    for c in passes:
        key = (c.precision, c.threads)
        prev = out.get(key)
        out[key] = c if prev is None else Ceiling(c.threads, c.size, prev.runs + c.runs,
                                                  max(prev.median_gmacs, c.median_gmacs),
                                                  max(prev.best_gmacs, c.best_gmacs), c.precision, c.engine)
    order = {p: i for i, p in enumerate(PRECISIONS)}
    return [out[k] for k in sorted(out, key=lambda k: (order.get(k[0], len(order)), k[1]))]


def ceiling_table(ceilings: list[Ceiling] | list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """precision -> threads -> best GMAC/s, from Ceiling objects or their recorded dicts."""
    out: dict[str, dict[int, float]] = {}
    for c in ceilings:
        c = c if isinstance(c, Ceiling) else Ceiling.from_dict(c)
        out.setdefault(c.precision, {})[c.threads] = c.best_gmacs
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="matmul GMAC/s per precision (run with thread variables set)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    args = parser.parse_args(argv)
    for precision in [p for p in args.precisions.split(",") if p]:
        engine, rate, module = KINDS[precision]
        try:
            median, best, runs = rate(args.size, args.seconds, threads=args.threads)
        except ImportError as err:
            print(json.dumps({"unavailable": precision, "reason": f"{module} is not installed ({err})"}))
            continue
        print(json.dumps(Ceiling(args.threads, args.size, runs, median, best, precision, engine).to_dict()),
              flush=True)


if __name__ == "__main__":
    main()
