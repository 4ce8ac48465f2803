"""How the learning rate moves within a training phase (`train --lr-schedule`); Keras loads only when used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tumor_edge.errors import ConfigError


def _constant(learning_rate: float, total_steps: int):
    return learning_rate


def _cosine(learning_rate: float, total_steps: int):
    import keras

    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps), alpha=0.01)


# "plateau" cuts the rate when the monitor stalls, which a run of a few epochs may never see; "cosine" lowers it
# smoothly to 1 % by the phase's last step, so a short run ends settled.
LR_SCHEDULES: dict[str, Callable[[float, int], Any]] = {"plateau": _constant, "cosine": _cosine}


def learning_rate_for(schedule: str, learning_rate: float, epochs: int, steps_per_epoch: int):
    """The optimizer's learning rate for one phase: a float, or a Keras schedule over the phase's steps."""
    return LR_SCHEDULES[schedule](learning_rate, epochs * steps_per_epoch)


def check_lr_schedule(name: str) -> str:
    if name not in LR_SCHEDULES:
        raise ConfigError(f"unknown --lr-schedule {name!r}; choose {', '.join(LR_SCHEDULES)}")
    return name
