"""Decoded pixels on disk: each image decoded and resized once, then read back by index, batch by batch.

Holding every decoded image in memory made training's memory grow with the dataset (5,712 images at 299 px are
1.5 GB; ten times the demo's 1,800 images at 96 px were 0.5 GB before TensorFlow copied them). The cache is one
flat file of uint8 images, written as they are decoded and read back with `os.pread` per image: the kernel's
page cache keeps hot images in RAM when RAM is free and drops them when it is not, and none of it counts as the
process's resident memory (a memory map would: touched file pages are resident). Memory then grows with the
batch, not with the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumor_edge.data.dataset import Sample
from tumor_edge.errors import InputImageError
from tumor_edge.progress import progress
from tumor_edge.runtime import Preprocessing, load_resized


@dataclass
class PixelCache:
    """`count` uint8 images of `shape` (H, W, 3) in `path`, with their labels and samples in file order."""

    path: Path
    shape: tuple[int, int, int]
    labels: np.ndarray  # int32 (count,)
    samples: list[Sample]
    failures: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.labels)

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.shape))

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at `indices`, in that order (uint8, (len, H, W, 3)); thread-safe (pread has no offset)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        size = self.image_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for row, i in enumerate(indices):
                if not 0 <= i < self.count:
                    raise IndexError(f"image {i} of a cache of {self.count}")
                data = os.pread(fd, size, int(i) * size)
                if len(data) != size:
                    raise OSError(f"pixel cache truncated at image {i}: {self.path}")
                out[row] = np.frombuffer(data, dtype=np.uint8).reshape(self.shape)
        finally:
            os.close(fd)
        return out

    def chunks(self, chunk: int = 256):
        """(start, uint8 images) in file order, `chunk` at a time: for prediction without loading them all."""
        for start in range(0, self.count, chunk):
            yield start, self.read(np.arange(start, min(start + chunk, self.count)))


def build_pixel_cache(samples: Sequence[Sample], spec: Preprocessing, path: Path, label: str = "decoding images",
                      show_progress: bool = True, workers: int = 2) -> PixelCache:
    """Decode every sample with the runtime's own preprocessing into `path`; unreadable files are reported.

    Only a few decoded images are in memory at any time (the thread pool's window), whatever the dataset's size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (spec.height, spec.width, 3)

    def load(sample: Sample) -> np.ndarray | str:
        try:
            return load_resized(sample.path, spec)
        except InputImageError as err:
            return str(err)

    kept: list[Sample] = []
    failures: list[str] = []
    with open(path, "wb") as fh, ThreadPoolExecutor(max_workers=workers) as pool:
        # map() submits everything at once and would hold every decoded image until written: bound the window.
        window = max(4, workers * 4)
        results = _bounded_map(pool, load, samples, window)
        for sample, result in progress(results, label, length=len(samples), enabled=show_progress):
            if isinstance(result, str):
                failures.append(result)
                continue
            fh.write(np.ascontiguousarray(result, dtype=np.uint8).tobytes())
            kept.append(sample)
    labels = np.array([s.label for s in kept], dtype=np.int32)
    return PixelCache(path, shape, labels, kept, failures)


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Sequence, window: int):
    """pool.map in order, with at most `window` results pending: memory stays bounded on huge datasets."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()
