"""Training in a child process, for a process whose Keras is already loaded with another backend.

Keras fixes its backend when first imported, so a library caller (a notebook, the test session) that has used
Keras on TensorFlow cannot switch to JAX in place. `train_in_child` runs the same `run_training` in a fresh
interpreter (`tumor_edge.train.child`) with `KERAS_BACKEND` set, relays its output line by line, and turns the
child's one-line error back into the same error class here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from tumor_edge import errors
from tumor_edge.train.augment import AugmentConfig
from tumor_edge.train.config import TrainConfig

PATH_FIELDS = ("data", "out", "cache_dir")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The inverse of `TrainConfig.to_dict` (what config.json records)."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in known}
    for name in PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    values["augment"] = AugmentConfig(**values.get("augment", {}))
    values["worker_hosts"] = tuple(values.get("worker_hosts", ()))
    return TrainConfig(**values)


def train_in_child(config: TrainConfig) -> Path | None:
    """`run_training(config)` in a fresh process on `config.backend`; the run folder, as run_training returns."""
    from tumor_edge.train.backends import current_backend

    print(f"training on the {config.backend} backend in a child process (Keras runs {current_backend()} here)",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="tumor-edge-train-") as tmp:
        request, result = Path(tmp) / "config.json", Path(tmp) / "result.json"
        request.write_text(json.dumps(config.to_dict()))
        env = {**os.environ, "KERAS_BACKEND": config.backend}
        with subprocess.Popen([sys.executable, "-m", "tumor_edge.train.child", str(request), str(result)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
            code = proc.wait()
        outcome = json.loads(result.read_text()) if result.is_file() else {}
    if "error" in outcome:
        cls = getattr(errors, outcome["type"], errors.TumorEdgeError)
        raise cls(outcome["error"])
    if code != 0:
        raise errors.TumorEdgeError(f"training on the {config.backend} backend failed in its child process "
                                    f"(exit {code}; its output is above)")
    return Path(outcome["run"]) if outcome.get("run") else None
