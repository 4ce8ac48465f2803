"""Where a bundle came from: the tumor-edge and library versions, the machine (tumor_edge.machine), the source
model and its hash, the training run and its data fingerprint, and how the model's output was settled."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from tumor_edge import __version__
from tumor_edge.export.model_source import ModelSource
from tumor_edge.machine import host, package_versions


def versions() -> dict[str, str | None]:
    """tumor_edge.machine's package versions; tumor-edge's own from the code when it runs from a checkout."""
    found = package_versions()
    found["tumor-edge"] = found.get("tumor-edge") or __version__
    return found


def provenance(source: ModelSource, parity_state: str) -> dict[str, Any]:
    run = source.run_config
    return {
        "tumor_edge_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": source.kind, "path": str(source.path.resolve()), "sha256": source.sha256},
        "run_dir": str(source.run_dir.resolve()) if source.run_dir else None,
        "data_fingerprint": run.data_fingerprint if run else None,
        "data_root": run.data_root if run else None,
        "trained": run.created if run else None,
        "training_versions": run.versions if run else None,
        "versions": versions(),
        "host": host(),
        "output": {"model_output": source.source_output, "decided_by": source.output_decided_by,
                   "softmax_appended": source.softmax_appended},
        "parity": parity_state,
    }


__all__ = ["provenance"]
