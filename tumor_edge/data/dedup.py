"""Exact and near-duplicate images shared between splits, and `tumor-edge data check`'s report.

A copy in Testing inflates the final accuracy; one in validation makes checkpoint selection optimistic
(`train --dedup` drops the held-out copies). A 255-bit perceptual hash (signs of the 16x16 lowest DCT frequencies of
a 64x64 grey thumbnail, as pHash but finer, since MRI slices are alike at 8x8) finds re-encoded, resized or
slightly shifted copies; a content sha256 finds byte-identical ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.data.dataset import DECODE_THREADS, DatasetIndex, Sample, discover
from tumor_edge.errors import InputImageError
from tumor_edge.progress import progress
from tumor_edge.runtime import load_rgb

HASH_SIZE = 16
THUMB = 64
MAX_DISTANCE = 12  # of 255 bits


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.ogrid[:n, :n]  # frequency down, sample across
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
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for result in progress(pool.map(one, samples), label, length=len(samples), enabled=show_progress):
            (failures if isinstance(result, str) else hashed).append(result)
    return hashed, failures


def find_cross_split_duplicates(train: Sequence[HashedImage], test: Sequence[HashedImage]) -> list[DuplicatePair]:
    """For each test image, its closest training image when within MAX_DISTANCE bits (exact: distance -1)."""
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
        if distances[j] <= MAX_DISTANCE:
            pairs.append(DuplicatePair(t.path, train[j].path, int(distances[j])))
    return pairs


@dataclass
class SplitLeaks:
    """For each held-out part, the pairs (held-out image, its closest training image) found."""

    val: list[DuplicatePair]
    test: list[DuplicatePair]

    def summary(self) -> dict[str, int]:
        return {"val_near_duplicates_of_train": len(self.val), "test_near_duplicates_of_train": len(self.test)}

    def lines(self, dropped: bool) -> list[str]:
        out = []
        for name, pairs in (("validation", self.val), ("test", self.test)):
            if not pairs:
                continue
            exact = sum(1 for p in pairs if p.exact)
            action = ("dropped (--dedup)" if dropped
                      else "kept; they make the checkpoint choice and the test score optimistic: pass --dedup")
            out.append(f"warning: {len(pairs)} {name} image(s) duplicate training images ({exact} byte-identical, "
                       f"{len(pairs) - exact} near-identical), {action}; e.g. {pairs[0].test} ~ {pairs[0].train}")
        return out


def find_split_leaks(train: Sequence[Sample], val: Sequence[Sample], test: Sequence[Sample],
                     show_progress: bool = True) -> SplitLeaks:
    """Hash every image once; compare validation with the training part, Testing with all of Training."""
    train_hashes, _ = hash_images(train, "hashing training part", show_progress)
    val_hashes, _ = hash_images(val, "hashing validation part", show_progress)
    test_hashes, _ = hash_images(test, "hashing Testing", show_progress)
    # Testing is compared with all of Training, as `data check` does: the model saw one part, selection the other.
    return SplitLeaks(find_cross_split_duplicates(train_hashes, val_hashes),
                      find_cross_split_duplicates(train_hashes + val_hashes, test_hashes))


def without(samples: Sequence[Sample], pairs: Sequence[DuplicatePair]) -> list[Sample]:
    """`samples` less the held-out side of `pairs`."""
    drop = {p.test for p in pairs}
    return [s for s in samples if s.path not in drop]


@dataclass
class CheckReport:
    index: DatasetIndex
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[DuplicatePair] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.index.problems + self.unreadable

    def summary_lines(self) -> list[str]:
        lines = [f"dataset: {self.index.root}", self.index.counts_table()]
        if self.index.ignored:
            lines.append(f"ignored {len(self.index.ignored)} non-image file(s), e.g. {self.index.ignored[0]}")
        lines += [f"problem: {problem}" for problem in self.problems]
        exact = sum(1 for d in self.duplicates if d.exact)
        if self.duplicates:
            lines.append(f"duplicates: {len(self.duplicates)} test image(s) also in Training "
                         f"({exact} byte-identical, {len(self.duplicates) - exact} near-identical); "
                         "they inflate test accuracy: `tumor-edge train --dedup` drops them from Testing")
            for d in self.duplicates[:20]:
                kind = "identical" if d.exact else f"near (distance {d.distance})"
                lines.append(f"  {d.test} ~ {d.train}: {kind}")
            if len(self.duplicates) > 20:
                lines.append(f"  ... and {len(self.duplicates) - 20} more")
        else:
            lines.append("duplicates: none between Training and Testing")
        return lines


def check_dataset(root: Path, find_duplicates: bool = True) -> CheckReport:
    """Decode every image (unreadable ones are listed) and look for Training/Testing duplicates."""
    index = discover(root)
    train_hashes, train_fail = hash_images(index.train, "checking Training")
    test_hashes, test_fail = hash_images(index.test, "checking Testing")
    duplicates = find_cross_split_duplicates(train_hashes, test_hashes) if find_duplicates else []
    return CheckReport(index, train_fail + test_fail, duplicates)
