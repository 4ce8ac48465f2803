"""Batches of the pixel cache for the JAX and PyTorch backends: a `keras.utils.PyDataset`, no TensorFlow.

Training batches are always full (the last one of an epoch is topped up from the epoch's order), so every step
has one shape and JAX compiles it once. On several devices validation keeps a multiple of the device count
(JAX splits a batch evenly), dropping at most devices - 1 images.
"""

from __future__ import annotations

import os

import keras
import numpy as np


def loader_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class CacheBatches(keras.utils.PyDataset):
    """(uint8 images, float32 one-hot labels) batches of a `PixelCache`."""

    def __init__(self, cache, num_classes: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                 multiple: int = 1, workers: int | None = None):
        workers = loader_workers() if workers is None else workers
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        if multiple > 1 and not shuffle and cache.count < multiple:
            raise ValueError(f"{cache.count} images cannot be split over {multiple} devices")
        self.cache = cache
        self.one_hot = np.eye(num_classes, dtype=np.float32)[cache.labels]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.multiple = max(1, int(multiple))
        self.rng = np.random.default_rng(seed)
        self.order = self._new_order()
        # validation over several devices: the images that split evenly (the batch size is a multiple too)
        self.count = cache.count if shuffle else cache.count - cache.count % self.multiple

    def _new_order(self) -> np.ndarray:
        count = self.cache.count
        return self.rng.permutation(count) if self.shuffle else np.arange(count)

    def __len__(self) -> int:
        return max(1, -(-self.count // self.batch_size))

    def indices(self, index: int) -> np.ndarray:
        start = index * self.batch_size
        idx = self.order[start:min(start + self.batch_size, self.count)]
        if self.shuffle and len(idx) < self.batch_size:  # top up: one step shape for the whole run
            idx = np.resize(np.concatenate([idx, self.order]), self.batch_size)
        return idx

    def __getitem__(self, index: int):
        idx = self.indices(index)
        return self.cache.read(idx), self.one_hot[idx]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self._new_order()
