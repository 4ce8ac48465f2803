"""Which image files export calibrates on, chooses the calibration method on, and proves parity on.

Calibration images come from the training split, the choice of calibration method from the validation split,
and parity from the test split: never the test split for anything but the final check.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR, Sample, discover, stratified_split
from tumor_edge.errors import DatasetError
from tumor_edge.runtime import is_scan_file

# Share of a foreign model's calibration images held out to choose the calibration method on.
FOREIGN_VAL_FRACTION = 0.2


@dataclass
class SampleSet:
    """Labelled image files plus where they came from, for the report."""

    samples: list[Sample]
    origin: str

    def __len__(self) -> int:
        return len(self.samples)


def stratified_subset(samples: Sequence[Sample], count: int | None, seed: int) -> list[Sample]:
    """At most `count` samples with each class in its original proportion (at least one each); all if None.
    Deterministic for a seed, so the same export calibrates on the same images every time."""
    samples = list(samples)
    if count is None or count >= len(samples):
        return samples
    by_label: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    chosen: list[Sample] = []
    total = len(samples)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        take = max(1, round(count * len(group) / total))
        chosen.extend(group[:take])
    rng.shuffle(chosen)
    return chosen[:count] if len(chosen) > count else chosen


def folder_samples(folder: Path, classes: Sequence[str], split_dir: str) -> list[Sample]:
    """A dataset root (ROOT/<split_dir>/<class>/*) or a folder of class sub-folders, as labelled samples. A folder
    whose sub-folders are not class names is refused, so a typo cannot silently test nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("folder not found", folder)
    if (folder / split_dir).is_dir():
        if split_dir == TRAIN_DIR:
            index = discover(folder, require_test=False)
            if list(index.classes) != list(classes):
                raise DatasetError(f"classes {', '.join(index.classes)} differ from the model's "
                                   f"({', '.join(classes)})", folder)
            return list(index.train)
        folder = folder / split_dir
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d for d in subdirs if d not in classes]
    if unknown:
        raise DatasetError(f"sub-folders {', '.join(unknown)} are not classes of this model "
                           f"({', '.join(classes)})", folder)
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if class_dir.is_dir():
            samples.extend(Sample(p, label) for p in sorted(class_dir.rglob("*")) if p.is_file() and is_scan_file(p))
    return samples


def calibration_from_folder(folder: Path, classes: list[str], seed: int,
                             keep_validation: SampleSet | None = None) -> tuple[SampleSet, SampleSet | None]:
    samples = folder_samples(folder, classes, TRAIN_DIR)
    if not samples:
        raise DatasetError("no calibration images found", folder)
    origin = f"calibration images {folder}"
    if keep_validation is not None:
        return SampleSet(samples, origin), keep_validation
    kept, held = stratified_split(samples, FOREIGN_VAL_FRACTION, seed)
    if not held or not kept:
        return SampleSet(samples, origin), None
    return (SampleSet(kept, f"{origin} ({100 - FOREIGN_VAL_FRACTION * 100:.0f} %)"),
            SampleSet(held, f"{origin} (held-out {FOREIGN_VAL_FRACTION * 100:.0f} %)"))


def test_from_folder(folder: Path, classes: list[str]) -> SampleSet:
    samples = folder_samples(folder, classes, TEST_DIR)
    if not samples:
        raise DatasetError("no test images found", folder)
    return SampleSet(samples, f"test images {folder}")
