"""Exact and near-duplicate images shared between Training and Testing.

Each such pair inflates test accuracy. A 255-bit perceptual hash (signs of the 16x16 lowest DCT frequencies of
a 64x64 grey thumbnail, as pHash but finer, since MRI slices are alike at 8x8) finds re-encoded, resized or
slightly shifted copies; a content sha256 finds byte-identical ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.data.dataset import Sample
from tumor_edge.errors import InputImageError
from tumor_edge.progress import progress
from tumor_edge.runtime import load_rgb

HASH_SIZE = 16
THUMB = 64
DEFAULT_MAX_DISTANCE = 12  # of 255 bits


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(THUMB)


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """Packed bits (uint8 array) of the hash."""
    grey = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = coeffs[1:] > np.median(coeffs[1:])  # DC term left out: it is overall brightness
    return np.packbits(bits)


@dataclass(frozen=True)
class HashedImage:
    path: Path
    sha256: str
    phash: np.ndarray


@dataclass(frozen=True)
class DuplicatePair:
    test: Path
    train: Path
    distance: int  # -1: identical bytes

    @property
    def exact(self) -> bool:
        return self.distance < 0


def hash_images(samples: Sequence[Sample], label: str = "hashing", show_progress: bool = True
                ) -> tuple[list[HashedImage], list[str]]:
    def one(sample: Sample) -> HashedImage | str:
        try:
            digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()
            return HashedImage(sample.path, digest, perceptual_hash(load_rgb(sample.path)))
        except InputImageError as err:
            return str(err)

    hashed, failures = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in progress(pool.map(one, samples), label, length=len(samples), enabled=show_progress):
            (failures if isinstance(result, str) else hashed).append(result)
    return hashed, failures


def find_cross_split_duplicates(train: Sequence[HashedImage], test: Sequence[HashedImage],
                                max_distance: int = DEFAULT_MAX_DISTANCE) -> list[DuplicatePair]:
    """For each test image, its closest training image when within `max_distance` bits (exact: distance -1)."""
    if not train or not test:
        return []
    by_sha = {h.sha256: h.path for h in train}
    train_hashes = np.stack([h.phash for h in train])
    pairs = []
    for t in test:
        if t.sha256 in by_sha:
            pairs.append(DuplicatePair(t.path, by_sha[t.sha256], -1))
            continue
        distances = np.bitwise_count(train_hashes ^ t.phash).sum(axis=1)
        j = int(np.argmin(distances))
        if distances[j] <= max_distance:
            pairs.append(DuplicatePair(t.path, train[j].path, int(distances[j])))
    return pairs
