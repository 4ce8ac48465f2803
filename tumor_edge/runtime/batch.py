"""Streaming, fault-tolerant batch classification: thousands of scans, some of them bad.

Files are decoded in a few threads (Pillow and numpy release the GIL while decoding and resizing) a bounded
distance ahead of inference, so memory stays flat however many files there are; each result is yielded in input
order as soon as its batch is done. A file that cannot be read becomes a `Failure` in the stream instead of an
exception, so one corrupt scan never stops a night's batch. A failure keeps its message and its exception, but
none of the local variables of the traceback's frames: they hold the partly decoded image (60 truncated
9-megapixel JPEGs kept ~2 GB alive in 0.1.0). The traceback itself (file names and lines, for `--debug`) stays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tumor_edge.errors import ConfigError, TumorEdgeError
from tumor_edge.runtime.failure import Failure, detached
from tumor_edge.runtime.image import load_rgb_frames
from tumor_edge.runtime.prechecks import input_findings
from tumor_edge.runtime.preprocess import Preprocessing, resize_rgb

if TYPE_CHECKING:
    from tumor_edge.runtime.classifier import Classifier, Prediction

DEFAULT_WORKERS = 2

__all__ = ["DEFAULT_WORKERS", "Failure", "decode_file", "detached", "iter_predictions"]


@dataclass(frozen=True)
class _Decoded:
    """The outcome of decoding one file: its frames' pixels, or why it failed."""

    source: str
    pixels: list[tuple[np.ndarray, int | None, int | None]]  # (uint8 HxWx3, frame, frame_count)
    failure: Failure | None = None
    checked: list[list[str]] | None = None  # each frame's input-check findings, when made while decoding


def decode_file(path: str | Path, spec: Preprocessing, frames: str = "middle") -> _Decoded:
    """Decode and resize one file for the model, never raising for a bad file."""
    source = str(path)
    try:
        decoded = load_rgb_frames(Path(path), frames)
        pixels = [(resize_rgb(f.image, spec), f.index if f.count > 1 else None, f.count if f.count > 1 else None)
                  for f in decoded]
        return _Decoded(source, pixels)
    except TumorEdgeError as err:
        return _Decoded(source, [], Failure(source, str(err), detached(err)))
    except MemoryError as err:
        return _Decoded(source, [], Failure(source, f"{source}: out of memory while decoding", detached(err)))
    except Exception as err:  # a decoder bug on a hostile file must not end the batch
        message = f"{source}: unexpected {type(err).__name__} while decoding ({str(err)[:200]})"
        return _Decoded(source, [], Failure(source, message, detached(err)))


def _decoded_in_order(paths: Iterable[str | Path], decode: Callable[[str | Path], _Decoded], workers: int,
                      lookahead: int) -> Iterator[_Decoded]:
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


def iter_predictions(classifier: Classifier, paths: Iterable[str | Path], batch_size: int = 16,
                     frames: str = "middle", workers: int | None = None) -> Iterator[Prediction | Failure]:
    """A Prediction or a Failure for each image (each frame with frames="all"), in input order.

    Results come a batch at a time; a failure waits for the batch its neighbours are in, so the order holds.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
    if not (frames in ("middle", "all") or isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0):
        raise ConfigError(f"frames must be 'middle', 'all' or a frame index, not {frames!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]  # one file, not its name's characters
    if workers is None:
        workers = DEFAULT_WORKERS
    if isinstance(paths, Sequence) and len(paths) <= 1:
        workers = 0  # one file: a thread pool would only add start-up time
    spec = classifier.preprocessing
    # checks in the workers overlap inference; inline (one file, workers=0) they would only move the checks' 1 MB of
    # float temporaries ahead of the engine's run, into the process's peak (measured +1 MB for one 299 px scan)
    check = classifier.trust.input_checks and workers > 0

    def decode(path: str | Path) -> _Decoded:
        decoded = decode_file(path, spec, frames)
        if check and decoded.failure is None:
            return replace(decoded, checked=input_findings(decoded.pixels))
        return decoded

    queue: list[tuple[str, np.ndarray | Failure, int | None, int | None, list[str] | None]] = []
    images = 0

    def flush() -> Iterator[Prediction | Failure]:
        nonlocal images
        if images:
            ready = [(p, (source, frame, count), found) for source, p, frame, count, found in queue
                     if not isinstance(p, Failure)]
            predictions = iter(classifier.predictions(np.stack([p for p, _, _ in ready]), [i for _, i, _ in ready],
                                                      [found for _, _, found in ready]))
        for _, item, _, _, _ in queue:
            yield item if isinstance(item, Failure) else next(predictions)
        queue.clear()
        images = 0

    for decoded in _decoded_in_order(paths, decode, workers, lookahead=max(2 * batch_size, 2 * workers)):
        if decoded.failure is not None:
            queue.append((decoded.source, decoded.failure, None, None, None))
            if images == 0:  # nothing waiting on inference: report it now
                yield from flush()
            continue
        found = decoded.checked or [None] * len(decoded.pixels)
        for (pixels, frame, count), checked in zip(decoded.pixels, found):
            queue.append((decoded.source, pixels, frame, count, checked))
            images += 1
            if images >= batch_size:
                yield from flush()
    yield from flush()
