"""Classifying one volume: read it, plan its slices, classify them a batch at a time, then summarise.

Results come in the order a writer prints them: a Prediction per slice, then the `VolumeSummary`; or a `Failure`
when the volume cannot be read (after the rows already given, when it breaks half-way), never an exception, so a
batch goes on. Memory: the volume as stored, plus one batch of model-sized slices.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np

from tumor_edge.errors import ModelError
from tumor_edge.runtime.preprocess import resize_rgb
from tumor_edge.runtime.readers.base import ReadOptions
from tumor_edge.runtime.readers.registry import read_scan
from tumor_edge.runtime.results import Failure, Model, OnPixels, Prediction, failure_of
from tumor_edge.runtime.volume_summary import VolumeSummary, VolumeVote, summarise

log = logging.getLogger("tumor_edge.input")

VolumeResult = Union[Prediction, Failure, VolumeSummary]


def classify_volume(model: Model, path: str | Path, axis: str = "axial", slices: str | int = "middle",
                    batch_size: int = 16, abstain: bool = False, vote: VolumeVote | None = None,
                    on_pixels: OnPixels | None = None) -> Iterator[VolumeResult]:
    """Slice rows, then the summary (or a Failure). `abstain`: slices with warnings get no label and do not
    count in the summary. `on_pixels(prediction, pixels)`: as in the pipeline, for each classified slice."""
    source = str(path)
    rows: list[tuple[int, dict[str, float], str | None]] = []
    try:
        scan = read_scan(path, ReadOptions(axis=axis, slices=slices))
    except Exception as err:  # TumorEdgeError, MemoryError, a reader bug on a hostile file: one line
        yield failure_of(source, err, "reading the volume")
        return
    for note in scan.notes:
        log.warning("%s: %s", source, note)
    spec = model.preprocessing
    plane = scan.axis or axis
    stream = iter(scan.pictures)
    warned = 0
    try:
        while True:
            batch = [s for _, s in zip(range(batch_size), stream)]
            if not batch:
                break
            seen = np.stack([resize_rgb(s.image, spec) for s in batch])
            results = model.predictions(seen, [(source, s.index, s.count) for s in batch], abstain=abstain,
                                        notes=[s.warnings for s in batch])
            del batch
            for result, pixels in zip(results, seen):
                if result.ok:
                    result = dataclasses.replace(result, axis=plane)
                    warned += bool(result.warnings)
                    rows.append((result.frame, result.probabilities, None if result.abstained else result.label))
                    if on_pixels is not None:
                        result = on_pixels(result, pixels)
                yield result
    except ModelError:
        raise  # the model, not this file, is at fault: the run stops as it does for images
    except Exception as err:
        yield failure_of(source, err, "reading the volume")
        return
    finally:
        scan.close()
    notes = list(scan.notes)
    if warned:
        notes.append(f"{warned} of {len(rows)} slices have warnings")
    yield summarise(source, plane, model.classes, rows, scan.count, notes, vote)
