"""The one prediction path: decode -> input checks -> inference -> post-processing -> optional work on the
pixels the model saw -> a row. `classify`, `serve`, the Classifier and export's parity all run it.

Files are decoded in a few threads a bounded distance ahead of inference, so memory stays flat however many files
there are; results come in input order. An unreadable input becomes a `Failure` in the stream, so one corrupt scan
never stops a batch; model errors raise. The model is anything with the Classifier's `preprocessing`,
`postprocessing` and `predictions` (`postprocess.Model`): the classifier calls this module, never the other way round.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np

from tumor_edge.errors import ConfigError, TumorEdgeError
from tumor_edge.runtime.postprocess import (
    Failure,
    Model,
    OnPixels,
    Prediction,
    VolumeSummary,
    failure_of,
    input_warnings,
)
from tumor_edge.runtime.preprocess import Preprocessing, load_rgb_frames, resize_rgb
from tumor_edge.runtime.readers.base import check_frames
from tumor_edge.runtime.readers.registry import is_volume

DEFAULT_WORKERS = 2

ScanItem = Union[Prediction, Failure, VolumeSummary]


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
    predictions: list[Prediction] = field(default_factory=list)
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


@dataclass(frozen=True)
class Decoded:
    """The outcome of decoding one file: its frames' pixels, or why it failed."""

    source: str
    pixels: list[tuple[np.ndarray, int | None, int | None]]  # (uint8 HxWx3, frame, frame_count)
    failure: Failure | None = None
    checked: list[list[str]] | None = None  # each frame's input-check findings, when made while decoding


def decode_file(path: str | Path, spec: Preprocessing, frames: str | int = "middle") -> Decoded:
    """Decode and resize one 2-D file for the model, never raising for a bad file."""
    source = str(path)
    try:
        decoded = load_rgb_frames(Path(path), frames)
        pixels = [(resize_rgb(f.image, spec), f.index if f.count > 1 else None, f.count if f.count > 1 else None)
                  for f in decoded]
        return Decoded(source, pixels)
    except Exception as err:  # a decoder bug on a hostile file must not end the batch either
        return Decoded(source, [], failure_of(source, err))


def _decoded_in_order(paths: Iterable[str | Path], decode: Callable[[str | Path], Decoded], workers: int,
                      lookahead: int) -> Iterator[Decoded]:
    """Decode in `workers` threads at most `lookahead` files ahead, yielding in input order."""
    if workers <= 0:
        for path in paths:
            yield decode(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tumor-edge-decode") as pool:
        pending: deque = deque()
        try:
            for path in paths:
                pending.append(pool.submit(decode, path))
                if len(pending) >= lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early (Ctrl-C, break): drop queued work
                future.cancel()


def iter_predictions(model: Model, paths: Iterable[str | Path] | str | Path, batch_size: int = 16,
                     frames: str | int = "middle", workers: int | None = None, abstain: bool = False,
                     on_pixels: OnPixels | None = None) -> Iterator[Prediction | Failure]:
    """A Prediction or a Failure for each 2-D image (each frame with frames="all"), in input order.

    Results come a batch at a time; a failure waits for the batch its neighbours are in, so the order holds.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
    check_frames(frames)
    if isinstance(paths, (str, Path)):
        paths = [paths]  # one file, not its name's characters
    if workers is None:
        workers = DEFAULT_WORKERS
    if isinstance(paths, Sequence) and len(paths) <= 1:
        workers = 0  # one file: a thread pool would only add start-up time
    spec = model.preprocessing
    # In the workers the input checks overlap inference; inline they would only move their float temporaries
    # ahead of the engine's run, into the process's peak.
    check = model.postprocessing.input_checks and workers > 0

    def decode(path: str | Path) -> Decoded:
        decoded = decode_file(path, spec, frames)
        if check and decoded.failure is None:
            return replace(decoded, checked=[input_warnings(pixels) for pixels, _, _ in decoded.pixels])
        return decoded

    queue: list[tuple[Failure | tuple[np.ndarray, tuple[str, int | None, int | None], list[str] | None]]] = []

    def flush() -> Iterator[Prediction | Failure]:
        ready = [item for item in queue if not isinstance(item, Failure)]
        if ready:
            results = iter(model.predictions(np.stack([p for p, _, _ in ready]), [i for _, i, _ in ready],
                                             [found for _, _, found in ready], abstain))
            pixels = iter(ready)
        for item in queue:
            if isinstance(item, Failure):
                yield item
                continue
            result, seen = next(results), next(pixels)[0]
            yield on_pixels(result, seen) if on_pixels is not None and result.ok else result
        queue.clear()

    for decoded in _decoded_in_order(paths, decode, workers, lookahead=max(2 * batch_size, 2 * workers)):
        if decoded.failure is not None:
            queue.append(decoded.failure)
            if len(queue) == 1:  # nothing waiting on inference: report it now
                yield from flush()
            continue
        found = decoded.checked or [None] * len(decoded.pixels)
        for (pixels, frame, count), checked in zip(decoded.pixels, found):
            queue.append((pixels, (decoded.source, frame, count), checked))
            if sum(not isinstance(item, Failure) for item in queue) >= batch_size:
                yield from flush()
    yield from flush()


def iter_scan_results(model: Model, paths: Iterable[str | Path] | str | Path, options: ScanOptions | None = None,
                      on_pixels: OnPixels | None = None) -> Iterator[ScanItem]:
    """Predictions, Failures and VolumeSummaries for every path in order: runs of 2-D files streamed in batches,
    each volume sliced, classified and summarised in its turn."""
    options = options or ScanOptions()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    run: list[str | Path] = []

    def images() -> Iterator[ScanItem]:
        stream = iter_predictions(model, list(run), options.batch_size, options.frames, options.workers,
                                  options.abstain, on_pixels)
        try:
            yield from stream
        finally:
            stream.close()
        run.clear()

    for path in paths:
        if not is_volume(path):
            run.append(path)
            continue
        if run:
            yield from images()
        from tumor_edge.runtime.volume import classify_volume

        yield from classify_volume(model, path, options.axis, options.slices, options.batch_size, options.abstain,
                                   on_pixels=on_pixels)
    if run:
        yield from images()


def classify_scan(model: Model, path: str | Path, options: ScanOptions | None = None) -> ScanResult:
    """All results of one path, gathered."""
    result = ScanResult(str(path))
    for item in iter_scan_results(model, [path], options):
        if isinstance(item, (Prediction, Failure)):
            (result.predictions if item.ok else result.failures).append(item)
        else:
            result.summary = item
    return result
