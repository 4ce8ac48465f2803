"""The machine's matrix-multiply ceilings (GMAC/s): what each format's achieved rate is set against.

One ceiling per kind of arithmetic a bundle's files run, both measured through onnxruntime itself, so no BLAS
setting moves them (`OPENBLAS_CORETYPE=Haswell` halves numpy's rate on an AVX-512 CPU, and a "ceiling" that
onnxruntime's own convolutions beat is no ceiling): fp32 is a float32 `MatMul` (MLAS's sgemm, behind a float
model's Conv/Gemm); int8 is a uint8 x int8 `MatMulInteger` (MLAS's u8s8 GEMM, behind the QLinearConv/QLinearMatMul
a QDQ int8 model becomes). Set against the float32 rate an int8 file's says little (it can exceed 1).

Beside them, the ISA's theoretical peak (`isa_peak`), with every assumption stated: a ceiling above it means the
clock assumption is wrong; a format above its own ceiling is a measurement error (`flag_over_ceiling`).

onnxruntime fixes its thread pool when it starts, so each thread count is measured in a fresh process with the
thread variables set (`python -m tumor_edge.bench.ceiling --threads N`), which also keeps the harness clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.machine import _cpuinfo, cpu_flags

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# n of the n x n x n matmuls: 1 GMAC, operands of 1-4 MB (beyond L2), a few milliseconds a run. Short runs
# matter on a shared machine: the best of many short runs finds the moments the cores were free, while every
# run of a larger matmul is cut into by other processes' time slices.
DEFAULT_SIZE = 1024


@dataclass(frozen=True)
class Ceiling:
    threads: int
    size: int  # n of the n x n x n matmul
    runs: int
    median_gmacs: float  # n^3 multiply-accumulates per matmul / median time
    best_gmacs: float
    precision: str = "fp32"  # "fp32" | "int8": which files it is the ceiling of
    engine: str = "onnxruntime MatMul float32"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ceiling:
        """A record without a precision is a float32 ceiling; one without an engine was measured with numpy's
        BLAS."""
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields.setdefault("engine", LEGACY_FP32_ENGINE)
        return cls(**fields)


LEGACY_FP32_ENGINE = "numpy BLAS float32 matmul"


def float_operands(rng, size: int):
    """Random normal float32 a, b [n, n]: no denormals, no zeros."""
    return (rng.standard_normal((size, size), dtype=np.float32),
            rng.standard_normal((size, size), dtype=np.float32))


# The int8 operands' ranges: uint8 activations over their full range, int8 weights over 7 bits.
INT8_A_RANGE = (0, 255)
INT8_B_RANGE = (-64, 63)


def int8_operands(rng, size: int):
    """uint8 a [n, n] over 0..255 and int8 b [n, n] over -64..63: operands whose products every CPU sums exactly.

    x86 without VNNI multiplies u8 x s8 with vpmaddubsw, which adds each pair of neighbouring products into a
    saturating int16: with these ranges a pair lies in [-32640, 32130] and never clips; VNNI and ARM64 are exact
    anyway. So the timed matmul computes the same int32 result on every CPU and the rate measures real integer
    arithmetic, not clipped sums (onnxruntime's advice for int8 on CPUs without VNNI: 7-bit weights)."""
    return (rng.integers(INT8_A_RANGE[0], INT8_A_RANGE[1] + 1, (size, size), dtype=np.uint8),
            rng.integers(INT8_B_RANGE[0], INT8_B_RANGE[1] + 1, (size, size), dtype=np.int8))


# precision -> (what measures it, the ONNX op, the onnx.TensorProto element types of a, b and y, its operands)
KINDS: dict[str, tuple[str, str, tuple[str, str, str], Callable[[Any, int], tuple[Any, Any]]]] = {
    "fp32": ("onnxruntime MatMul float32", "MatMul", ("FLOAT", "FLOAT", "FLOAT"), float_operands),
    "int8": ("onnxruntime MatMulInteger uint8 x int8", "MatMulInteger", ("UINT8", "INT8", "INT32"), int8_operands),
}
PRECISIONS: tuple[str, ...] = tuple(KINDS)


def matmul_model(precision: str, size: int) -> bytes:
    """A one-node ONNX model: op(a [n, n], b [n, n]) -> y [n, n] with the precision's op and element types."""
    from onnx import TensorProto, helper

    _, op, types, _ = KINDS[precision]
    a, b, y = (getattr(TensorProto, t) for t in types)
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])], f"{op}_ceiling",
        [helper.make_tensor_value_info("a", a, [size, size]), helper.make_tensor_value_info("b", b, [size, size])],
        [helper.make_tensor_value_info("y", y, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by every onnxruntime this project supports
    return model.SerializeToString()


def matmul_rate(precision: str, size: int, min_seconds: float, threads: int) -> tuple[float, float, int]:
    """(median, best) GMAC/s of onnxruntime's n x n matmul of this precision with `threads` intra-op threads (as
    the runtime's BackendOptions set them) over at least 5 runs and `min_seconds`, and the number of timed runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(matmul_model(precision, size), options, providers=["CPUExecutionProvider"])
    a, b = KINDS[precision][3](np.random.default_rng(0), size)
    session.run(None, {"a": a, "b": b})  # warm-up: thread pool start, page faults, kernel selection
    rates: list[float] = []
    spent = 0.0
    while len(rates) < 5 or spent < min_seconds:
        start = time.perf_counter()
        session.run(None, {"a": a, "b": b})
        elapsed = time.perf_counter() - start
        spent += elapsed
        rates.append(float(size) ** 3 / elapsed / 1e9)
    return statistics.median(rates), max(rates), len(rates)


def ceiling_precision(file_precision: str) -> str:
    """Which ceiling a file of this precision is set against: int8 files the int8 one; fp32 and fp16 files the
    float32 one (CPUs without fp16 arithmetic widen fp16 weights and compute in float32)."""
    return file_precision if file_precision in KINDS else "fp32"


# ---- the ISA's theoretical peak ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsaPeak:
    """FMA units x vector lanes x clock, per core and precision, with the assumptions that give it.

    Every assumption errs high, so the figure is an upper bound: the most FMA units any core of the ISA family
    has, one MAC per fp32 lane per unit per cycle, bits/8 uint8 x int8 products per unit per cycle. The clock is
    the highest the OS reports (in a VM often the base clock): a core boosting above it can exceed this "peak",
    and a measured ceiling above it is flagged (`peak_problems`)."""

    isa: str  # the vector extension the peak assumes, e.g. "avx512f"
    vector_bits: int  # the width of one FMA unit's datapath
    fma_units: int  # per core
    clock_ghz: float
    clock_source: str
    assumptions: str = ""

    def macs_per_cycle(self, precision: str) -> int:
        """Multiply-accumulates per cycle per core: fp32 (and fp16 widened to fp32) lanes, or int8 products."""
        per_unit = self.vector_bits // 8 if ceiling_precision(precision) == "int8" else self.vector_bits // 32
        return self.fma_units * per_unit

    def gmacs(self, precision: str, threads: int) -> float:
        """Peak GMAC/s of `threads` cores (one thread per core) at `precision`."""
        return self.macs_per_cycle(precision) * self.clock_ghz * threads


def vector_datapath(flags: set[str], vendor: str = "", family: int | None = None, machine: str = "x86_64"
                    ) -> tuple[str, int, int, str]:
    """(ISA name, datapath bits per FMA unit, FMA units per core, why) from the CPU flags."""
    if machine in ("aarch64", "arm64"):  # Neoverse V1/V2: 4 x 128-bit (NEON/SVE) pipes, the most of any core
        return ("asimd", 128, 4, "ARM: assumed 4 x 128-bit FMA pipes per core (Neoverse V-class, the widest)")
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == 0x19:  # Zen 4 splits each 512-bit op into two 256-bit halves
            return ("avx512f", 256, 2, "Zen 4 (family 0x19): AVX-512 on 2 x 256-bit FMA units")
        return ("avx512f", 512, 2, "AVX-512: assumed 2 x 512-bit FMA units per core (Zen 5, Xeon Gold/Platinum)")
    if "avx2" in flags and "fma" in flags:
        return ("avx2+fma", 256, 2, "AVX2+FMA: assumed 2 x 256-bit FMA units per core")
    return ("sse", 128, 2, "no FMA extension found: assumed 2 x 128-bit multiply-add units per core")


def read_clock_ghz(cpuinfo_mhz: float | None,
                   cpufreq_max: str = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
                   ) -> tuple[float | None, str]:
    """(GHz, where it came from): cpufreq's maximum (kHz) when the OS exposes it, else /proc/cpuinfo's MHz."""
    try:
        with open(cpufreq_max) as fh:
            return int(fh.read().strip()) / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    if cpuinfo_mhz:
        return cpuinfo_mhz / 1e3, "/proc/cpuinfo cpu MHz (in a VM often the base clock, not the boost clock)"
    return None, "unknown"


def isa_peak(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None, clock_ghz: float | None = None
             ) -> IsaPeak | None:
    """This CPU's theoretical peak (None where its clock cannot be read). `clock_ghz` overrides the OS's."""
    import platform

    blocks = _cpuinfo(cpuinfo)
    first = blocks[0] if blocks else {}
    family = first.get("cpu family", "")
    mhz = [float(b["cpu mhz"]) for b in blocks if b.get("cpu mhz", "").replace(".", "", 1).isdigit()]
    isa, bits, units, why = vector_datapath(cpu_flags(blocks), first.get("vendor_id", ""),
                                            int(family) if family.isdigit() else None,
                                            (machine or platform.machine()).lower())
    source = "given"
    if clock_ghz is None:
        clock_ghz, source = read_clock_ghz(max(mhz, default=None))
    if not clock_ghz:
        return None
    return IsaPeak(isa, bits, units, round(clock_ghz, 3), source,
                   f"{why}; 1 fp32 MAC per lane per unit per cycle; {bits // 8} uint8 x int8 products per unit "
                   f"per cycle; one thread per core")


# ---- figures against their ceilings ---------------------------------------------------------------------------

# A figure may exceed its measured ceiling by this much before it is called a measurement error: the ceiling is
# the best of short runs on a shared machine, and the figure's p50 another moment's: the tolerance covers the
# ceiling's run-to-run spread under load (benchmarks/results records it).
OVER_CEILING_TOLERANCE = 0.05


def flag_over_ceiling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each row whose achieved GMAC/s exceeds its own ceiling (`ceiling_fraction` > 1 + the tolerance) with
    a `measurement_error` saying so, and return those rows. A model cannot do its multiply-accumulates faster than
    the engine multiplies large matrices: above it, the MAC count, the timing or the ceiling is wrong."""
    flagged = []
    for row in rows:
        fraction = row.get("ceiling_fraction")
        row.pop("measurement_error", None)
        if fraction is not None and fraction > 1.0 + OVER_CEILING_TOLERANCE:
            row["measurement_error"] = (f"{fraction:.0%} of its {row.get('ceiling_precision', 'fp32')} ceiling: "
                                        f"a measurement error (MAC count, timing or ceiling)")
            flagged.append(row)
    return flagged


def peak_problems(ceilings: list[Ceiling], peak: IsaPeak | None) -> list[str]:
    """One line per measured ceiling above the ISA's theoretical peak at the same threads: the clock (or an
    assumption of `peak`) is wrong, and the line gives the clock the measurement implies."""
    if peak is None:
        return []
    out = []
    for c in ceilings:
        limit = peak.gmacs(c.precision, c.threads)
        if c.best_gmacs > limit:
            implied = c.best_gmacs / (peak.macs_per_cycle(c.precision) * c.threads)
            out.append(f"{c.precision} ceiling at {c.threads} thread(s), {c.best_gmacs:.1f} GMAC/s, exceeds the "
                       f"ISA peak {limit:.1f} at {peak.clock_ghz:.2f} GHz: the cores run at >= {implied:.2f} GHz "
                       f"or an assumption ({peak.assumptions}) is wrong")
    return out


def measure_ceilings(threads: int, size: int = DEFAULT_SIZE, min_seconds: float = 1.5
                     ) -> tuple[list[Ceiling], dict[str, str]]:
    """(every ceiling kind at `threads`, the kinds that could not be measured with why), from one child process
    whose BLAS and onnxruntime use that many threads."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    cmd = [sys.executable, "-m", "tumor_edge.bench.ceiling", "--threads", str(threads), "--size", str(size),
           "--seconds", str(min_seconds)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180.0, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"matmul ceiling child failed: {proc.stderr.strip().splitlines()[-1:]}")
    ceilings, unavailable = [], {}
    for line in proc.stdout.strip().splitlines():
        data = json.loads(line)
        if "unavailable" in data:
            unavailable[data["unavailable"]] = data["reason"]
        else:
            ceilings.append(Ceiling.from_dict(data))
    return ceilings, unavailable


def merge_ceilings(passes: list[Ceiling]) -> list[Ceiling]:
    """One ceiling per precision and thread count from several passes (before and after the formats): the best
    rates seen, since load from other processes only ever slows a matmul down."""
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
        try:
            median, best, runs = matmul_rate(precision, args.size, args.seconds, args.threads)
        except ImportError as err:
            print(json.dumps({"unavailable": precision, "reason": f"onnx is not installed ({err})"}))
            continue
        ceiling = Ceiling(args.threads, args.size, runs, median, best, precision, KINDS[precision][0])
        print(json.dumps(asdict(ceiling)), flush=True)


if __name__ == "__main__":
    main()
