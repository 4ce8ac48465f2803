"""Where training runs: one device, several devices of one machine, or several machines.

JAX spreads one machine's devices with `keras.distribution.DataParallel`; PyTorch trains on one device.
TensorFlow uses `MirroredStrategy` over a machine's GPUs (or logical CPU devices) and
`MultiWorkerMirroredStrategy` over machines described by `TF_CONFIG` (set from `--worker-hosts`/`--task-index`).
Every worker reads its shard of the images; only the chief writes the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tumor_edge.errors import ConfigError
from tumor_edge.train.backends import gpu_count

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")


def cluster_from_flags(worker_hosts: Sequence[str], task_index: int | None) -> dict[str, Any]:
    """A TF_CONFIG for `worker_hosts` (host:port each, the same list on every worker) and this worker's index."""
    hosts = [h.strip() for h in worker_hosts if h.strip()]
    if not hosts:
        raise ConfigError("worker hosts must name at least one host:port")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"worker host {host!r} is not host:port")
    if task_index is None or not 0 <= task_index < len(hosts):
        raise ConfigError(f"task index must be 0..{len(hosts) - 1} for {len(hosts)} worker host(s), "
                          f"got {task_index}")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": task_index}}


def read_cluster(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """TF_CONFIG, parsed; None when unset. A malformed one is a configuration error, not a traceback."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        if not isinstance(task["type"], str) or not isinstance(task["index"], int) or workers < 1:
            raise ValueError("bad task")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"TF_CONFIG is not a valid cluster description ({err})") from err
    return config


def is_chief(cluster: dict[str, Any] | None) -> bool:
    if cluster is None:
        return True
    task = cluster["task"]
    if "chief" in cluster["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


@dataclass
class Distribution:
    """The strategy chosen and what it spans, for the banner and config.json."""

    strategy: Any
    kind: str  # default | mirrored | multi-worker | data-parallel (JAX)
    devices: list[str] = field(default_factory=list)
    gpus: int = 0
    workers: int = 1
    task: str = "worker 0"
    chief: bool = True

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def distributed(self) -> bool:
        """A tf.distribute strategy over several replicas (its datasets are distributed by TensorFlow)."""
        return self.kind in ("mirrored", "multi-worker")

    def describe(self) -> str:
        where = f"{self.workers} worker(s), this is {self.task}{' (chief)' if self.chief else ''}; " \
            if self.kind == "multi-worker" else ""
        return (f"{type(self.strategy).__name__} ({self.kind}): {where}{self.replicas} replica(s) on "
                f"{', '.join(self.devices) or 'CPU'}")

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": type(self.strategy).__name__, "kind": self.kind, "replicas": self.replicas,
                "devices": self.devices, "gpus": self.gpus, "workers": self.workers, "task": self.task,
                "chief": self.chief}


def _default(tf, gpus) -> Distribution:
    devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["/device:CPU:0"]
    return Distribution(tf.distribute.get_strategy(), "default", devices, len(gpus))


def _mirrored(tf, gpus) -> Distribution:
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if not devices:  # logical CPU devices (tf.config.set_logical_device_configuration), or the one CPU
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return Distribution(tf.distribute.MirroredStrategy(devices=devices), "mirrored", devices, len(gpus))


def _multi_worker(tf, gpus) -> Distribution:
    cluster = read_cluster()
    if cluster is None:
        raise ConfigError("multi-worker training needs a cluster: set TF_CONFIG, or give the worker hosts and "
                          "this worker's task index")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = cluster["task"]
    workers = sum(len(cluster["cluster"].get(kind, [])) for kind in ("chief", "worker"))
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/device:CPU:0"]
    return Distribution(strategy, "multi-worker", devices, len(gpus), workers, f"{task['type']} {task['index']}",
                        is_chief(cluster))


BUILDERS: dict[str, Callable[[Any, list], Distribution]] = {
    "default": _default, "mirrored": _mirrored, "multi-worker": _multi_worker}


class OneDevice:
    """The strategy of a JAX or PyTorch run on one device: nothing to distribute."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


class DataParallel(OneDevice):
    """JAX over several devices: `keras.distribution.DataParallel`, set globally so that `fit` splits batches."""

    def __init__(self, devices: list[str]):
        import keras

        self.num_replicas_in_sync = len(devices)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    @staticmethod
    def release() -> None:
        import keras

        keras.distribution.set_distribution(None)


def _keras_strategy(name: str, backend: str) -> Distribution:
    """JAX/PyTorch: one device, or (JAX, `auto`/`mirrored` over several GPUs) data parallel."""
    if name == "multi-worker" or read_cluster() is not None:
        raise ConfigError(f"multi-worker training runs on the tensorflow backend only, not {backend}")
    gpus = gpu_count(backend)
    if backend == "jax":
        import keras

        devices = keras.distribution.list_devices()
        if len(devices) > 1 and (name == "mirrored" or (name == "auto" and gpus > 1)):
            return Distribution(DataParallel(devices), "data-parallel", devices, gpus)
        return Distribution(OneDevice(), "default", devices[:1], gpus)
    if name == "mirrored":
        raise ConfigError("--strategy mirrored needs the tensorflow or jax backend")
    return Distribution(OneDevice(), "default", ["cuda:0" if gpus else "cpu"], gpus)


def choose_strategy(name: str, backend: str) -> Distribution:
    """`auto`: multi-worker when TF_CONFIG names several workers, mirrored over several GPUs, else the default.
    Call before TensorFlow executes anything: MultiWorkerMirroredStrategy configures its collectives."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if backend != "tensorflow":
        return _keras_strategy(name, backend)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        cluster = read_cluster()
        several = cluster is not None and sum(len(v) for v in cluster["cluster"].values()) > 1
        name = "multi-worker" if several else "mirrored" if len(gpus) > 1 else "default"
    return BUILDERS[name](tf, gpus)
