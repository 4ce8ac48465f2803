"""This machine: CPU model, cores, the instruction sets that decide int8 speed, OS, Python and library
versions, and the load average, for bench records, provenance, run configs, `env` and the runtime's cache key.

Versions come from package metadata, never from importing the package: asking for TensorFlow's version must
not cost TensorFlow's import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from pathlib import Path
from typing import Any

from tumor_edge.contracts.formats import ENGINES

# Instruction-set flags that decide how fast fp32, fp16 and int8 kernels can be, as /proc/cpuinfo names them.
SIMD_FLAGS: dict[str, tuple[str, ...]] = {
    "x86": ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"),
    "arm": ("asimd", "asimddp", "i8mm", "fphp", "asimdhp", "bf16", "sve", "sve2"),
}

# What int8 inference can use, strongest first: flag -> description.
INT8_ACCELERATION: tuple[tuple[str, str], ...] = (
    ("amx_int8", "AMX-INT8 tile units"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("i8mm", "ARM i8mm"),
    ("asimddp", "ARM dot product (SDOT/UDOT)"),
)

# Distribution names to report; the first installed wins for each label. The engines' come from the format table.
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-aarch64"),
    "keras": ("keras",),
    "onnx": ("onnx",),
    "tf2onnx": ("tf2onnx",),
    "pillow": ("pillow",),
    "tumor-edge": ("tumor-edge",),
}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        pairs = (line.partition(":") for line in block.splitlines() if ":" in line)
        blocks.append({key.strip().lower(): value.strip() for key, _, value in pairs})
    return [entry for entry in blocks if entry]


def cpu_model(blocks: list[dict[str, str]]) -> str:
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        for block in blocks:
            value = block.get(key, "")
            if value and not value.isdigit():
                return value
    return platform.processor() or platform.machine()


def cpu_flags(blocks: list[dict[str, str]]) -> set[str]:
    for block in blocks:
        raw = block.get("flags") or block.get("features")
        if raw:
            return set(raw.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The widest instruction-set extension that decides which onnxruntime kernels run here (NCHWc block size,
    int8 kernels): what an optimised model graph depends on besides the onnxruntime version."""
    flags = cpu_flag_set()
    widest = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "asimddp", "asimd", "sse4_2")
    return next((isa for isa in widest if isa in flags), "baseline" if flags else "unknown")


def int8_acceleration(flags: set[str] | None = None) -> list[str]:
    """What int8 inference can use on this CPU, strongest first (empty: none)."""
    flags = cpu_flag_set() if flags is None else flags
    return [desc for flag, desc in INT8_ACCELERATION if flag in flags]


def cpu_flag_set() -> set[str]:
    """This machine's instruction-set flags, as /proc/cpuinfo names them (empty where unreadable)."""
    return cpu_flags(_cpuinfo())


def physical_cores(blocks: list[dict[str, str]]) -> int | None:
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    return len(pairs) or None


def package_versions() -> dict[str, str | None]:
    """label -> the version installed: numpy, then every engine of the format table, then the rest of PACKAGES."""
    # imported here: classify's cache lookup (cpu_isa) must not pay for importlib.metadata's imports
    from importlib import metadata

    def version(names: tuple[str, ...]) -> str | None:  # the first installed
        for name in names:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(name)
        return None

    engines = {name: engine.packages for name, engine in ENGINES.items() if engine.packages}
    return {label: version(names) for label, names in {"numpy": PACKAGES["numpy"], **engines, **PACKAGES}.items()}


def host() -> dict[str, str]:
    """The short description stored in bundles and run folders: platform, architecture, CPU and its ISA."""
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(_cpuinfo()),
            "isa": cpu_isa()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # Windows has no load average
        return None


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine for a benchmark record."""
    blocks = _cpuinfo()
    flags = cpu_flags(blocks)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
    family = "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "x86"
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": cpu_model(blocks),
        "cpu_id": " ".join(f"{k}={blocks[0][k]}" for k in ("vendor_id", "cpu family", "model", "stepping")
                           if blocks and k in blocks[0]) or None,
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(blocks),
        "virtualized": "hypervisor" in flags,
        "simd": {flag: flag in flags for flag in SIMD_FLAGS[family]},
        "int8_acceleration": int8_acceleration(flags) or ["none (no VNNI/AMX/dot-product instructions: int8 saves "
                                                          "size, not necessarily time)"],
        "memory_gib": mem_total,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "load_average": load_average(),
    }


def machine_summary(info: dict[str, Any]) -> str:
    """One line for the screen and the Markdown report."""
    present = [flag for flag, on in info.get("simd", {}).items() if on]
    interesting = [f for f in present if f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                               "asimddp", "i8mm", "sve")]
    pk = info.get("packages", {})
    versions = [f"{engine.title} {pk.get(name)}" for name, engine in ENGINES.items() if engine.packages]
    versions.append(f"TensorFlow {pk.get('tensorflow')}")
    return (f"{info.get('cpu_model')} ({info.get('usable_cpus')} usable CPUs"
            f"{', VM' if info.get('virtualized') else ''}; {' '.join(interesting) or 'no AVX2'}); "
            f"int8: {', '.join(info.get('int8_acceleration', []))}; {info.get('os')}; Python {info.get('python')}; "
            f"{', '.join(versions)}")
