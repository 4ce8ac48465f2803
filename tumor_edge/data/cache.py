"""Decoded pixels on disk: each image decoded and resized once, then read back by index, batch by batch.

One flat file of uint8 images, read back with `os.pread` per image: the kernel's page cache keeps hot images
in RAM while RAM is free, none of it counts as the process's resident memory (a memory map's touched pages
would), so memory grows with the batch, not with the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumor_edge.data.dataset import Sample, decode_samples
from tumor_edge.runtime import Preprocessing


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

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at `indices`, in that order (uint8, (len, H, W, 3)); thread-safe (pread has no offset)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        size = int(np.prod(self.shape))
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
    """Decode every sample with the runtime's own preprocessing into `path`; unreadable files are reported."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: list[Sample] = []
    failures: list[str] = []
    with open(path, "wb") as fh:
        for sample, result in decode_samples(samples, spec, label, show_progress, workers):
            if isinstance(result, str):
                failures.append(result)
                continue
            fh.write(np.ascontiguousarray(result, dtype=np.uint8).tobytes())
            kept.append(sample)
    labels = np.array([s.label for s in kept], dtype=np.int32)
    return PixelCache(path, (spec.height, spec.width, 3), labels, kept, failures)
