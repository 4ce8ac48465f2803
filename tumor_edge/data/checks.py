"""`tumor-edge data check`: everything wrong with a dataset folder, one line each, before any training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tumor_edge.data.dataset import DatasetIndex, discover
from tumor_edge.data.dedup import DuplicatePair, find_cross_split_duplicates, hash_images


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
        for problem in self.problems:
            lines.append(f"problem: {problem}")
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


def check_dataset(root: Path, find_duplicates: bool = True, show_progress: bool = True) -> CheckReport:
    """Decode every image (unreadable ones are listed) and look for Training/Testing duplicates."""
    index = discover(root)
    train_hashes, train_fail = hash_images(index.train, "checking Training", show_progress)
    test_hashes, test_fail = hash_images(index.test, "checking Testing", show_progress)
    duplicates = find_cross_split_duplicates(train_hashes, test_hashes) if find_duplicates else []
    return CheckReport(index, train_fail + test_fail, duplicates)
