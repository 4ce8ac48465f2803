"""Where `export` records the bundle it wrote last, so `classify` works with no flags afterwards.

The record is per user and per machine ($XDG_STATE_HOME/tumor-edge/last_bundle): on a separate device there
is none, and the runtime says how to name a bundle instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.errors import ModelError

MODEL_ENV = "TUMOR_EDGE_MODEL"


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tumor-edge"


def remember_last_bundle(bundle_dir: Path) -> None:
    home = state_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "last_bundle").write_text(str(Path(bundle_dir).resolve()) + "\n")


def resolve_model_path(model: str | Path | None) -> Path:
    """The model argument, else $TUMOR_EDGE_MODEL, else the bundle `export` wrote last on this machine."""
    if model:
        return Path(model)
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    marker = state_home() / "last_bundle"
    if marker.is_file():
        return Path(marker.read_text().strip())
    raise ModelError(f"no model given: name a bundle folder (or a .onnx file), set {MODEL_ENV}, "
                     "or run `tumor-edge export` first")
