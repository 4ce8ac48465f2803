"""Uploaded bytes -> the JSON `classify --json` prints, through the runtime's own decoding and its caps.

The runtime's readers decode from paths (their caps, DICOM detection, frame and slice handling live there, and
the suffixes they claim in their registry), so the bytes go to a private temporary folder (0700, created per
request) for the time of one inference and are deleted in `finally`, whatever happens. File names in results and
errors are the client's, never the temporary path, and no answer shows where files live on the server
(`without_folders`: a client reads file names, the operator's log keeps the folders). Every answer names the model
file and engine that produced it. Decoding, checks, inference, the probability rule and the page's map are the
runtime's one prediction path (`Classifier.iter_results`); the map is drawn on the pixels the model saw, never
from a second decode.

The server reads bundle files only as plain files inside the bundle folder, never through a symbolic link (a
MODEL_CARD.md linked to ~/.ssh/id_rsa would otherwise be served at /v1/model): the card as the runtime reads
metadata.json and the models (`read_confined`). The folder itself may be a link.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import METADATA_FILE, MODEL_CARD, BundleMetadata, read_confined
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime import MIN_CAM_CELLS, VolumeSummary, cam_cells, claimed_suffix, explain_prediction, is_volume

MAX_CARD_BYTES = 1 << 20
# The folders of an absolute path (POSIX `/a/b/`, `~/a/`, Windows `C:\a\` or `\\host\share\`), not preceded by a
# word character (so `input/output` or `1/2` stay): removing them leaves the file's own name.
_FOLDERS = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:|\\\\[^\s\\/]+)?[\\/](?:[^\s\\/'\"<>|]*[\\/])+")


def bundle_of(model_path: Path) -> Path | None:
    """The bundle folder of a model path (the folder itself, or the folder holding the file's metadata)."""
    if model_path.is_dir():
        return model_path
    return model_path.parent if (model_path.parent / METADATA_FILE).exists() else None


@dataclass
class Outcome:
    """Results of one upload: JSON-ready dicts, and whether the file itself was unreadable."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False


def model_source(classifier: Any) -> dict[str, str]:
    """The model file (as the bundle names it, not the engine's cached form) and the engine that ran it."""
    backend = classifier.backend
    return {"file": Path(getattr(backend, "path", classifier.model_path)).name,
            "engine": str(getattr(backend, "name", "unknown"))}


def classify_bytes(classifier: Any, data: bytes, filename: str, frames: str = "middle",
                   heatmap: bool = False) -> Outcome:
    """Classify one uploaded scan, whatever the runtime's readers claim (by the client's suffix, which the
    temporary file keeps, or by content). A volume is answered as one item, its summary, with its slices' rows
    under `slice_results`. Model errors (not file errors) raise, as in `iter_predictions`."""
    source = model_source(classifier)
    suffix = claimed_suffix(filename) or ""
    folder = Path(tempfile.mkdtemp(prefix="tumor-edge-serve-"))  # mode 0700: private to this user
    try:
        path = folder / ("scan" + suffix)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        outcome = Outcome()
        volume, slices = is_volume(path), []  # a volume's slice rows go inside its summary
        maps: dict[int | None, dict[str, Any]] = {}  # the page's map of each image (frame), drawn as it is seen

        def draw(result: Any, pixels: Any) -> Any:
            if not volume:
                maps[result.frame] = page_heatmap(classifier, pixels, result, through_model=heatmap)
            return result

        stream = classifier.iter_results([path], batch_size=4, frames=frames, workers=0, on_pixels=draw)
        try:
            for result in stream:
                if isinstance(result, VolumeSummary):
                    summary = result.to_dict(RESEARCH_NOTICE)
                    summary.update(file=filename, model=source, slice_results=slices)
                    outcome.results.append(summary)
                    continue
                item = {**result.to_dict(), "file": filename, "model": source}
                if result.ok and not volume:  # the page draws the predicted class's map and says what drew it
                    item.update(maps.pop(result.frame, {}))
                if not result.ok:
                    outcome.failed = True
                    reason = getattr(result.error, "reason", None) or result.message.replace(str(path), filename)
                    item["error"] = without_folders(f"{filename}: {reason}", [folder])
                if volume and result.ok:  # a slice: named as `classify --json` names it; the axis is the summary's
                    item.pop("axis", None)
                    slices.append(item)
                else:
                    outcome.results.append(item)
        finally:
            stream.close()
        return outcome
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def page_heatmap(classifier: Any, pixels: Any, result: Any, through_model: bool = False) -> dict[str, Any]:
    """{"heatmap": the predicted class's map, "heatmap_method": what drew it}: the exact CAM when the model has
    one of 4x4 cells or more (it came with the prediction); else, only when the request asked (`?heatmap=1`, as
    the page does), occlusion through the model on `pixels`, tens of inferences a client who did not ask never
    pays for. {} otherwise."""
    cells = cam_cells(result.outputs)
    exact = cells is not None and min(cells) >= MIN_CAM_CELLS  # in the outputs already
    if not exact and not through_model:
        return {}
    explanation = explain_prediction(classifier, None if exact else pixels, result.index, result.outputs)
    return {"heatmap": explanation.map.round(4).tolist(), "heatmap_method": explanation.label}


def model_card(model_path: Path) -> tuple[str | None, str | None]:
    """(the bundle's model card, None) or (None, why it is not shown): a card that is a symbolic link or not a
    regular file is never read (it could be any file of the server's user)."""
    folder = bundle_of(model_path)
    if folder is None:
        return None, None
    try:
        return read_confined(folder, MODEL_CARD, MAX_CARD_BYTES).decode("utf-8", errors="replace"), None
    except FileNotFoundError:
        return None, None
    except ModelError as err:
        return None, f"{MODEL_CARD}: {err.reason}; not shown"
    except OSError as err:
        return None, f"{MODEL_CARD} unreadable: {without_folders(first_line(err), [folder])}"


def model_description(classifier: Any, metadata: BundleMetadata, model_path: Path) -> dict[str, Any]:
    """`GET /v1/model`: the bundle's metadata, which file runs on which engine and providers, and its card.
    Paths in the metadata (provenance records the exporting machine's folders) are cut to their names."""
    card, card_error = model_card(model_path)
    backend = classifier.backend
    described = {
        "metadata": without_folders_in(metadata.to_dict(), [model_path]),
        "model_file": Path(getattr(backend, "path", model_path)).name,
        "model": model_source(classifier),
        "providers": list(getattr(backend, "providers", []) or []),
        "model_card": card,
        "notice": RESEARCH_NOTICE,
    }
    if card_error is not None:
        described["model_card_error"] = card_error
    return described


def without_folders(text: str, known: Iterable[Path] = ()) -> str:
    """`text` with every absolute path cut to its last component: the `known` folders first (whatever characters
    their names hold), then anything else shaped like an absolute path (an engine's own message may name one)."""
    for folder in sorted({str(p).rstrip("/\\") for p in known} - {"", "."}, key=len, reverse=True):
        text = re.sub(re.escape(folder) + r"[\\/]", "", text)  # a path inside it: its name there
        text = re.sub(re.escape(folder) + r"(?![\w.-])", lambda _, name=Path(folder).name: name, text)
    return _FOLDERS.sub("", text)


def without_folders_in(value: Any, known: Iterable[Path] = ()) -> Any:
    """A copy of JSON-like `value` with `without_folders` applied to every string in it (keys stay)."""
    if isinstance(value, str):
        return without_folders(value, known)
    if isinstance(value, dict):
        return {key: without_folders_in(item, known) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_folders_in(item, known) for item in value]
    return value
