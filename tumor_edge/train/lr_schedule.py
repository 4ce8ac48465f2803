"""How the learning rate moves within a training phase: a registry of schedules, read by `train --lr-schedule`.

Only the standard library at import time (the CLI reads the choices without loading Keras).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tumor_edge.errors import ConfigError


def _constant(learning_rate: float, total_steps: int):
    return learning_rate


def _cosine(learning_rate: float, total_steps: int):
    import keras

    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps), alpha=0.01)


# How the learning rate moves within a phase. "plateau" waits for the monitor to stall before cutting the rate,
# which a run of a few epochs may never see: its last epochs still train at the full rate, with noisy validation
# scores (BatchNorm statistics chasing a moving network). "cosine" lowers it smoothly to 1 % by the phase's last
# step, so a short run ends settled (the CPU demo: see tumor_edge.demo.pipeline.PROFILES).
LR_SCHEDULES: dict[str, Callable[[float, int], Any]] = {"plateau": _constant, "cosine": _cosine}


def learning_rate_for(schedule: str, learning_rate: float, epochs: int, steps_per_epoch: int):
    """The optimizer's learning rate for one phase: a float, or a Keras schedule over the phase's steps."""
    return LR_SCHEDULES[schedule](learning_rate, epochs * steps_per_epoch)


def check_lr_schedule(name: str) -> str:
    if name not in LR_SCHEDULES:
        raise ConfigError(f"unknown --lr-schedule {name!r}; choose {', '.join(LR_SCHEDULES)}")
    return name
