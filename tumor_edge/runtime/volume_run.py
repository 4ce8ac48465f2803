"""Classifying one volume: read it, plan its slices, classify them a batch at a time, then summarise.

A generator of results in the order a writer prints them: a Prediction per slice (its `frame` is the slice index,
`frame_count` the slices along the axis), then the `VolumeSummary`; or a single `Failure` when the volume cannot
be read (after rows already given, when it breaks half-way). It never raises for a bad file, so a batch goes on.
Memory: the volume as stored, plus one batch of model-sized slices.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from tumor_edge.errors import ModelError, TumorEdgeError
from tumor_edge.runtime.failure import Failure, detached
from tumor_edge.runtime.preprocess import resize_rgb
from tumor_edge.runtime.readers.base import ReadOptions
from tumor_edge.runtime.readers.registry import read_scan
from tumor_edge.runtime.volume_summary import VolumeSummary, VolumeVote, summarise

log = logging.getLogger("tumor_edge.input")

# A Prediction (runtime.classifier, which imports this module: named here only in words), a Failure or the summary.
VolumeResult = Union[Any, Failure, VolumeSummary]


def _failure(source: str, err: BaseException) -> Failure:
    if isinstance(err, TumorEdgeError):
        return Failure(source, str(err), detached(err))
    if isinstance(err, MemoryError):
        return Failure(source, f"{source}: out of memory while reading the volume", detached(err))
    return Failure(source, f"{source}: unexpected {type(err).__name__} while reading the volume ({str(err)[:200]})",
                   detached(err))


def settings_check_inputs(classifier: Any) -> bool:
    """Whether this classifier runs the input checks (a bundle may turn them off)."""
    return bool(getattr(classifier.trust, "input_checks", True))


def classify_volume(classifier: Any, path: str | Path, axis: str = "axial", slices: str | int = "middle",
                    batch_size: int = 16, abstain: bool = False, vote: VolumeVote | None = None,
                    on_slice=None) -> Iterator[VolumeResult]:
    """Slice rows, then the summary (or a Failure). `abstain`: slices with warnings get no label and do not
    count in the summary. `on_slice(prediction, pixels)`: called with each classified slice and the pixels the
    model saw, returns the prediction to give (`classify --heatmap` draws its overlay there)."""
    source = str(path)
    rows: list[tuple[int, dict[str, float], str | None]] = []
    try:
        scan = read_scan(path, ReadOptions(axis=axis, slices=slices))
    except Exception as err:  # TumorEdgeError, MemoryError, a reader bug on a hostile file: one line
        yield _failure(source, err)
        return
    for note in scan.notes:
        log.warning("%s: %s", source, note)
    spec = classifier.preprocessing
    stream = iter(scan.pictures)
    warned = 0
    try:
        while True:
            batch = [s for _, s in zip(range(batch_size), stream)]
            if not batch:
                break
            pixels_seen = np.stack([resize_rgb(s.image, spec) for s in batch])
            results = classifier.predictions(pixels_seen, [(source, s.index, s.count) for s in batch])
            own = [s.warnings for s in batch]
            seen = list(pixels_seen) if on_slice is not None else [None] * len(batch)
            del batch
            for result, slice_warnings, pixels in zip(results, own, seen):
                if result.ok and slice_warnings and settings_check_inputs(classifier):
                    result = dataclasses.replace(result, warnings=(*slice_warnings, *result.warnings))
                if result.ok:
                    if abstain and result.warnings:
                        result = dataclasses.replace(result, abstained=True)
                    warned += bool(result.warnings)
                    rows.append((result.frame, result.probabilities, None if result.abstained else result.label))
                    if on_slice is not None:
                        result = on_slice(result, pixels)
                yield result
    except ModelError:
        raise  # the model, not this file, is at fault: the run stops as it does for images
    except Exception as err:
        yield _failure(source, err)
        return
    finally:
        scan.close()
    notes = list(scan.notes)
    if warned:
        notes.append(f"{warned} of {len(rows)} slices have warnings")
    yield summarise(source, scan.axis or axis, classifier.classes, rows, scan.count, notes, vote)
