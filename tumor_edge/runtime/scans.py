"""Classifying any scan a reader claims, images and volumes alike: what `Classifier.classify` and
`Classifier.iter_results` run.

The registry (`runtime/readers/`) says what a path is. Runs of 2-D files go through the streaming image batch
(`batch.iter_predictions`, via the classifier) and give a Prediction per file (per frame); a volume (NIfTI, a
DICOM series folder) gives a Prediction per slice and then its `VolumeSummary` (`volume_run`), as `classify`
prints them. Bad inputs become `Failure`s in the stream; model errors raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tumor_edge.errors import TumorEdgeError
from tumor_edge.runtime.failure import Failure
from tumor_edge.runtime.readers.registry import is_volume
from tumor_edge.runtime.volume_run import classify_volume
from tumor_edge.runtime.volume_summary import VolumeSummary

# A Prediction (runtime.classifier, which imports this module: named here only in words), a Failure or a summary.
ScanItem = Union[Any, Failure, VolumeSummary]


@dataclass(frozen=True)
class ScanOptions:
    """How to classify: `frames` of multi-frame 2-D files; `axis` and `slices` of volumes; `abstain`: a warned
    picture gets no label (and a warned slice does not count in its volume's summary)."""

    frames: str | int = "middle"
    axis: str = "axial"
    slices: str | int = "middle"
    batch_size: int = 16
    workers: int | None = None
    abstain: bool = False


@dataclass
class ScanResult:
    """One path's results: its predictions (one per image, frame or slice), its volume summary (volumes only),
    and its failures (an unreadable file: no predictions; a volume broken half-way: some, then a failure)."""

    source: str
    predictions: list = field(default_factory=list)
    summary: VolumeSummary | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def label(self) -> str | None:
        """The volume's label, else the (first) prediction's; None when nothing was labelled."""
        if self.summary is not None:
            return self.summary.label
        labelled = [p for p in self.predictions if not p.abstained]
        return labelled[0].label if labelled else None

    def exception(self) -> TumorEdgeError:
        return self.failures[0].exception()


def _abstained(result: Any, abstain: bool) -> Any:
    if abstain and result.ok and result.warnings and not result.abstained:
        import dataclasses

        return dataclasses.replace(result, abstained=True)
    return result


def iter_scan_results(classifier: Any, paths: Iterable[str | Path] | str | Path,
                      options: ScanOptions | None = None) -> Iterator[ScanItem]:
    """Predictions, Failures and VolumeSummaries for every path in order: runs of 2-D files streamed in batches,
    each volume sliced, classified and summarised in its turn."""
    options = options or ScanOptions()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    run: list[str | Path] = []

    def images() -> Iterator[ScanItem]:
        stream = classifier.iter_predictions(list(run), batch_size=options.batch_size, frames=options.frames,
                                             workers=options.workers)
        try:
            for result in stream:
                yield _abstained(result, options.abstain)
        finally:
            stream.close()
        run.clear()

    for path in paths:
        if not is_volume(path):
            run.append(path)
            continue
        if run:
            yield from images()
        yield from classify_volume(classifier, path, options.axis, options.slices, options.batch_size,
                                   options.abstain)
    if run:
        yield from images()


def classify_scan(classifier: Any, path: str | Path, options: ScanOptions | None = None) -> ScanResult:
    """All results of one path, gathered."""
    result = ScanResult(str(path))
    for item in iter_scan_results(classifier, [path], options):
        if isinstance(item, VolumeSummary):
            result.summary = item
        elif item.ok:
            result.predictions.append(item)
        else:
            result.failures.append(item)
    return result


__all__ = ["ScanItem", "ScanOptions", "ScanResult", "classify_scan", "iter_scan_results"]
