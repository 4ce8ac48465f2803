"""Images the training part shares with validation (checkpoint selection turns optimistic) or Testing (the
final accuracy inflates); `--dedup` drops the held-out copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tumor_edge.data.dataset import Sample
from tumor_edge.data.dedup import DuplicatePair, find_cross_split_duplicates, hash_images


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
