"""Uploaded bytes -> the JSON `classify --json` prints, through the runtime's own decoding and its caps.

The runtime decodes from paths (its caps, DICOM detection and frame handling live there), so the bytes go to a
private temporary folder (0700, created per request) for the time of one inference and are deleted in
`finally`, whatever happens. File names in results and errors are the client's, never the temporary path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import METADATA_FILE, MODEL_CARD, BundleMetadata
from tumor_edge.errors import first_line
from tumor_edge.runtime.heatmap_overlay import class_map

# Suffixes worth keeping on the temporary file (DICOM is also recognised by its magic; Pillow by content).
KEEP_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})
MAX_CARD_BYTES = 1 << 20


@dataclass
class Outcome:
    """Results of one upload: JSON-ready dicts, and whether the file itself was unreadable."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False


def classify_bytes(classifier: Any, data: bytes, filename: str, frames: str = "middle") -> Outcome:
    """Classify one uploaded scan. Model errors (not file errors) raise, as in `iter_predictions`."""
    suffix = Path(filename).suffix.lower()
    folder = Path(tempfile.mkdtemp(prefix="tumor-edge-serve-"))  # mode 0700: private to this user
    try:
        path = folder / ("scan" + (suffix if suffix in KEEP_SUFFIXES else ""))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        outcome = Outcome()
        stream = classifier.iter_predictions([path], batch_size=4, frames=frames, workers=0)
        try:
            for result in stream:
                item = result.to_dict()
                item["file"] = filename
                if result.ok and "heatmap" in result.outputs:  # the page draws the predicted class's map
                    item["heatmap"] = class_map(result.outputs["heatmap"], result.index).round(4).tolist()
                if not result.ok:
                    outcome.failed = True
                    reason = getattr(result.error, "reason", None) or result.message.replace(str(path), filename)
                    item["error"] = f"{filename}: {reason}"
                outcome.results.append(item)
        finally:
            stream.close()
        return outcome
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bundle_folder(model_path: Path) -> Path | None:
    """The bundle folder of a model path (the folder itself, or the folder holding the file's metadata)."""
    if model_path.is_dir():
        return model_path
    return model_path.parent if (model_path.parent / METADATA_FILE).is_file() else None


def model_description(classifier: Any, metadata: BundleMetadata, model_path: Path) -> dict[str, Any]:
    """`GET /v1/model`: the bundle's metadata, which file runs on which providers, and its model card."""
    card = None
    folder = bundle_folder(model_path)
    if folder is not None:
        card_path = folder / MODEL_CARD
        try:
            if card_path.is_file() and card_path.stat().st_size <= MAX_CARD_BYTES:
                card = card_path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            card = f"(model card unreadable: {first_line(err)})"
    backend = classifier.backend
    return {
        "metadata": metadata.to_dict(),
        "model_file": Path(getattr(backend, "path", model_path)).name,
        "providers": list(getattr(backend, "providers", []) or []),
        "model_card": card,
        "notice": RESEARCH_NOTICE,
    }
