"""Which Keras 3 backend trains: TensorFlow, JAX or PyTorch run the same model, layers and `fit`.

Keras reads `KERAS_BACKEND` once, on first import: `select_backend` sets it, or says it cannot (Keras already
runs another backend here, so the caller trains in a child process: tumor_edge.worker). Only the standard
library at import time.

JAX compiles each new step shape with XLA, slowly; the programs go to a persistent cache under tumor-edge's
cache folder, so a second run with the same shapes loads them.

Mixed precision `auto` picks what the hardware runs fast: float16 on NVIDIA GPUs (tensor cores), bfloat16 where
the CPU has AMX bfloat16 tiles and there is no GPU, float32 otherwise. AVX512_BF16 alone gains no speed to trade
bfloat16's 8-bit mantissa for (benchmarks/training_precision.py). Variables stay float32 in every policy.

The learning rate moves within each phase by `--lr-schedule`: "plateau" cuts it when the monitor stalls, which a
run of a few epochs may never see; "cosine" lowers it smoothly to 1 % by the phase's last step, so a short run
ends settled.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumor_edge.errors import ConfigError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"  # TrainConfig.backend's default, and the CLI's
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}  # --jit-compile -> Keras' compile(jit_compile=...)
JIT_CHOICES = tuple(JIT_COMPILE)
JAX_CACHE_ENV = "TUMOR_EDGE_JAX_CACHE_DIR"  # "" or "0" turns the persistent compilation cache off
# --mixed-precision value -> Keras policy name
POLICIES: dict[str, str] = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
PRECISIONS = ("auto", *POLICIES)
BF16_CPU_FLAGS = ("amx_bf16",)


def current_backend() -> str | None:
    """The backend of an already imported Keras, else None (nothing decided yet)."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def select_backend(name: str) -> bool:
    """Make `name` the backend Keras will load; False when Keras is already loaded with another one."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    loaded = current_backend()
    if loaded is not None:
        return loaded == name
    os.environ["KERAS_BACKEND"] = name
    if name != "tensorflow" and importlib.util.find_spec(name) is None:
        extra = "pip install 'tumor-edge[jax]'" if name == "jax" else "pip install torch"
        raise ConfigError(f"--backend {name} needs {name} installed ({extra})")
    return True


def gpu_count(backend: str) -> int:
    """GPUs the backend sees (Keras already imported with `backend`)."""
    if backend == "torch":
        torch = sys.modules["torch"]  # loaded by Keras' torch backend
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    if backend == "jax":
        import jax

        return len([d for d in jax.devices() if d.platform == "gpu"])
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def backend_version(backend: str) -> str | None:
    return getattr(sys.modules.get(backend), "__version__", None)


def jax_cache_dir() -> Path | None:
    raw = os.environ.get(JAX_CACHE_ENV)
    if raw is not None:
        return None if raw in ("", "0") else Path(raw)
    from tumor_edge.runtime import cache_root

    return cache_root() / "jax-compilation"


def configure_jax(deterministic: bool) -> Path | None:
    """Before Keras builds anything: the persistent XLA compilation cache (every program, however quick to
    compile), and deterministic GPU reductions when asked. Returns the cache folder (None: off)."""
    if deterministic:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    import jax

    folder = jax_cache_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def configure_deterministic(backend: str) -> None:
    """--deterministic: the backend's deterministic kernels (slower). JAX's is an XLA flag (configure_jax)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        sys.modules["torch"].use_deterministic_algorithms(True)


def peak_device_bytes(backend: str) -> int | None:
    """Peak memory the backend allocated on its first GPU so far; None on a CPU (or when it cannot say)."""
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            stats = device.memory_stats() if device.platform == "gpu" else None
            return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
        if backend == "torch":
            torch = sys.modules["torch"]
            return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        import tensorflow as tf

        if not tf.config.list_logical_devices("GPU"):
            return None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    except (RuntimeError, ValueError, KeyError, AttributeError):
        return None


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str  # auto | off | float16 | bfloat16
    policy: str  # the Keras policy: float32 | mixed_float16 | mixed_bfloat16
    reason: str

    @property
    def mixed(self) -> bool:
        return self.policy != "float32"


def choose_precision(requested: str, gpus: int, cpu_flags: Collection[str] | None = None) -> PrecisionChoice:
    """The policy for `requested`; `cpu_flags` defaults to this machine's (tumor_edge.machine)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown mixed precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return PrecisionChoice(requested, POLICIES[requested], "asked for")
    if gpus:
        return PrecisionChoice(requested, POLICIES["float16"], "GPU present: float16 (tensor cores)")
    if cpu_flags is None:
        from tumor_edge.machine import cpu_flag_set

        cpu_flags = cpu_flag_set()
    have = [f for f in BF16_CPU_FLAGS if f in cpu_flags]
    if have:
        return PrecisionChoice(requested, POLICIES["bfloat16"], f"no GPU; the CPU has {', '.join(have)}")
    return PrecisionChoice(requested, POLICIES["off"], "no GPU and no AMX bfloat16 on the CPU")


def applied_updates(optimizer) -> int:
    """Updates the optimizer applied so far (a LossScaleOptimizer's `iterations` skips non-finite steps)."""
    import keras

    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _constant(learning_rate: float, total_steps: int):
    return learning_rate


def _cosine(learning_rate: float, total_steps: int):
    import keras

    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps), alpha=0.01)


LR_SCHEDULES: dict[str, Callable[[float, int], Any]] = {"plateau": _constant, "cosine": _cosine}


def learning_rate_for(schedule: str, learning_rate: float, epochs: int, steps_per_epoch: int):
    """The optimizer's learning rate for one phase: a float, or a Keras schedule over the phase's steps."""
    return LR_SCHEDULES[schedule](learning_rate, epochs * steps_per_epoch)


def check_lr_schedule(name: str) -> None:
    if name not in LR_SCHEDULES:
        raise ConfigError(f"unknown --lr-schedule {name!r}; choose {', '.join(LR_SCHEDULES)}")
