"""The dataset layout ROOT/Training/<class>/*, ROOT/Testing/<class>/*: problems a user can fix are collected
as one-line messages; only a layout that cannot be trained on raises. And its pixels, decoded by the runtime's own
preprocessing: in memory (`load_pixels`), or on disk (`PixelCache`).

The pixel cache is one flat file of uint8 images, read back with `os.pread` per image: the kernel's page cache
keeps hot images in RAM while RAM is free, none of it counts as the process's resident memory (a memory map's
touched pages would), so memory grows with the batch, not with the dataset.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from tumor_edge.errors import DatasetError, InputImageError
from tumor_edge.progress import progress
from tumor_edge.runtime import Preprocessing, is_scan_file, load_resized

TRAIN_DIR = "Training"
TEST_DIR = "Testing"
DECODE_THREADS = 2


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class DatasetIndex:
    root: Path
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    problems: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        by_split = {"Training": Counter(s.label for s in self.train), "Testing": Counter(s.label for s in self.test)}
        return {split: {name: c[i] for i, name in enumerate(self.classes)} for split, c in by_split.items()}

    def counts_table(self) -> str:
        counts = self.counts()
        width = max(len(c) for c in self.classes) + 2
        rows = [(name, counts["Training"][name], counts["Testing"][name]) for name in self.classes]
        table = [("class", "Training", "Testing"), *rows, ("total", len(self.train), len(self.test))]
        return "\n".join(f"{name:<{width}}{train:>10}{test:>10}" for name, train, test in table)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover(root: str | Path, require_test: bool = True) -> DatasetIndex:
    """Index a dataset folder; raise only when there is nothing to train on."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset folder not found", root)
    train_dir, test_dir = root / TRAIN_DIR, root / TEST_DIR
    if not train_dir.is_dir():
        raise DatasetError(f"missing split folder '{TRAIN_DIR}/' (expected {TRAIN_DIR}/<class>/*.jpg)", root)
    if require_test and not test_dir.is_dir():
        raise DatasetError(f"missing split folder '{TEST_DIR}/' (expected {TEST_DIR}/<class>/*.jpg)", root)
    classes = _class_dirs(train_dir)
    if not classes:
        raise DatasetError("no class folders", train_dir)
    if test_dir.is_dir():
        test_classes = _class_dirs(test_dir)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DatasetError(
                "class folders differ between Training and Testing"
                + (f"; only in Training: {', '.join(only_train)}" if only_train else "")
                + (f"; only in Testing: {', '.join(only_test)}" if only_test else ""),
                root,
            )
    if len(classes) < 2:
        raise DatasetError(f"need at least 2 classes, found {len(classes)}", train_dir)
    index = DatasetIndex(root, classes, [], [])
    for split_dir, bucket in ((train_dir, index.train), (test_dir, index.test)):
        if not split_dir.is_dir():
            continue
        for label, name in enumerate(classes):
            scans: list[Path] = []
            for p in sorted((split_dir / name).rglob("*")):
                if p.is_file():
                    (scans if is_scan_file(p) else index.ignored).append(p)
            if not scans:
                index.problems.append(f"{split_dir / name}: empty class folder (no images)")
            bucket.extend(Sample(p, label) for p in scans)
    empty_train = [c for i, c in enumerate(classes) if not any(s.label == i for s in index.train)]
    if empty_train:
        raise DatasetError(f"no training images for class(es): {', '.join(empty_train)}", train_dir)
    return index


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(kept, held_out): `fraction` of each class held out, at least one per class when it has two or more."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    kept, held = [], []
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        rng.shuffle(group)
        n_held = int(round(len(group) * fraction))
        if fraction > 0 and n_held == 0 and len(group) >= 2:
            n_held = 1
        held.extend(group[:n_held])
        kept.extend(group[n_held:])
    return kept, held


@dataclass
class LoadedPixels:
    """Decoded, resized pixels of the samples that could be read, and one line for each that could not."""

    pixels: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int32 (N,)
    samples: list[Sample]
    failures: list[str]


def decode_samples(samples: Sequence[Sample], spec: Preprocessing, label: str, failures: list[str],
                   show_progress: bool = True) -> Iterator[tuple[Sample, np.ndarray]]:
    """(sample, its pixels by the runtime's own preprocessing) in order, for each that can be read; why each other
    cannot is appended to `failures`. At most a few decoded images wait at any time, whatever the dataset's size."""

    def load(sample: Sample) -> np.ndarray | str:
        try:
            return load_resized(sample.path, spec)
        except InputImageError as err:
            return str(err)

    def ordered(pool: ThreadPoolExecutor) -> Iterator[tuple[Sample, np.ndarray | str]]:
        submitted = ((sample, pool.submit(load, sample)) for sample in samples)
        window = deque(islice(submitted, 4 * DECODE_THREADS))  # a sliding window: one submitted as one is taken
        while window:
            sample, future = window.popleft()
            window.extend(islice(submitted, 1))
            yield sample, future.result()

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for sample, result in progress(ordered(pool), label, length=len(samples), enabled=show_progress):
            if isinstance(result, str):
                failures.append(result)
            else:
                yield sample, result


def load_pixels(samples: Sequence[Sample], spec: Preprocessing, label: str = "loading images",
                show_progress: bool = True) -> LoadedPixels:
    """Decode every sample into memory; unreadable files are reported, not fatal."""
    out = np.empty((len(samples), spec.height, spec.width, 3), dtype=np.uint8)
    kept: list[Sample] = []
    failures: list[str] = []
    for sample, pixels in decode_samples(samples, spec, label, failures, show_progress):
        out[len(kept)] = pixels
        kept.append(sample)
    return LoadedPixels(out[: len(kept)], np.array([s.label for s in kept], dtype=np.int32), kept, failures)


def write_split(path: Path, root: Path, classes: Sequence[str], splits: dict[str, Sequence[Sample]],
                seed: int, val_fraction: float) -> None:
    """split.json: which file went where, relative to the dataset root, so a run can be reproduced."""

    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(p.resolve())

    data = {"root": str(root.resolve()), "classes": list(classes), "seed": seed, "val_split": val_fraction,
            **{name: [[rel(s.path), s.label] for s in samples] for name, samples in splits.items()}}
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_split(path: Path, name: str, root: Path | None = None) -> tuple[list[str], list[Sample]]:
    """(classes, samples) of one split ("train", "val" or "test") of a run's split.json."""
    data = json.loads(Path(path).read_text())
    base = Path(root) if root else Path(data["root"])
    samples = [Sample(base / rel, int(label)) for rel, label in data.get(name, [])]  # an absolute `rel` stays
    return list(data["classes"]), samples


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
                      show_progress: bool = True) -> PixelCache:
    """Decode every sample with the runtime's own preprocessing into `path`; unreadable files are reported."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: list[Sample] = []
    failures: list[str] = []
    with open(path, "wb") as fh:
        for sample, pixels in decode_samples(samples, spec, label, failures, show_progress):
            fh.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
            kept.append(sample)
    labels = np.array([s.label for s in kept], dtype=np.int32)
    return PixelCache(path, (spec.height, spec.width, 3), labels, kept, failures)
