"""Mixed precision: which Keras dtype policy runs, and whether loss scaling skipped the updates.

`auto` picks what the hardware runs fast: float16 on NVIDIA GPUs (tensor cores), bfloat16 where the CPU has
AMX bfloat16 tiles and there is no GPU, float32 otherwise. AVX512_BF16 alone gains no speed to trade bfloat16's
8-bit mantissa for (benchmarks/training_precision.py). Variables stay float32 in every policy.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tumor_edge.errors import ConfigError

# CLI value -> Keras policy name
POLICIES: dict[str, str] = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
CHOICES = ("auto", *POLICIES)
BF16_CPU_FLAGS = ("amx_bf16",)


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str  # auto | off | float16 | bfloat16
    policy: str  # the Keras policy: float32 | mixed_float16 | mixed_bfloat16
    reason: str

    @property
    def mixed(self) -> bool:
        return self.policy != "float32"


def _auto(gpus: int, cpu_flags: Collection[str]) -> tuple[str, str]:
    if gpus:
        return "float16", "GPU present: float16 (tensor cores)"
    have = [f for f in BF16_CPU_FLAGS if f in cpu_flags]
    if have:
        return "bfloat16", f"no GPU; the CPU has {', '.join(have)}"
    return "off", "no GPU and no AMX bfloat16 on the CPU"


def choose_precision(requested: str, gpus: int, cpu_flags: Collection[str] | None = None) -> PrecisionChoice:
    """The policy for `requested`; `cpu_flags` defaults to this machine's (tumor_edge.machine)."""
    if requested not in CHOICES:
        raise ConfigError(f"unknown mixed precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return PrecisionChoice(requested, POLICIES[requested], "asked for")
    if cpu_flags is None:
        from tumor_edge.machine import cpu_flag_set

        cpu_flags = cpu_flag_set()
    name, reason = _auto(gpus, cpu_flags)
    return PrecisionChoice(requested, POLICIES[name], reason)


def applied_updates(optimizer) -> int:
    """Updates the optimizer applied so far (a LossScaleOptimizer's `iterations` skips non-finite steps)."""
    import keras

    return int(keras.ops.convert_to_numpy(optimizer.iterations))
