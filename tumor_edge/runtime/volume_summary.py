"""One answer for a whole volume from its slices' answers, with the slices that support it.

The rule (documented in the README): over the slices given a label, take each class's mean probability; the
volume's class is the tumour class (any class but `notumor`) with the highest mean probability, provided the
slices whose own label is that class make up at least `min_fraction` of the labelled slices (one slice always
suffices when at most 1 / min_fraction slices were classified); otherwise it is `notumor`. A tumour seen in a
few slices of many therefore needs a few slices' agreement, not one stray slice. Research use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_TUMOUR = "notumor"


@dataclass(frozen=True)
class VolumeVote:
    """How many of the labelled slices must carry the tumour class for the volume to get it."""

    min_fraction: float = 0.2

    def needed(self, labelled: int) -> int:
        return max(1, math.ceil(self.min_fraction * labelled - 1e-9))


@dataclass(frozen=True)
class VolumeSummary:
    """The volume's class (None when no slice got a label), its mean probabilities, which slices were classified,
    which support the class, and what the reader noticed about the volume."""

    source: str
    axis: str
    label: str | None
    probabilities: dict[str, float]
    slices: tuple[int, ...]  # indices classified (labelled or not), along the axis
    supporting: tuple[int, ...]  # indices whose own label is `label`
    slice_count: int  # slices along the axis in the volume
    warnings: tuple[str, ...] = ()
    rule: str = ""

    @property
    def confidence(self) -> float | None:
        return None if self.label is None else self.probabilities[self.label]

    def support_text(self) -> str:
        if self.label is None:
            return f"no slice of {len(self.slices)} was given a label"
        listed = ", ".join(str(i) for i in self.supporting)
        return f"{self.label} in {self.axis} slices {listed} ({len(self.supporting)} of {len(self.slices)})"

    def to_dict(self, notice: str) -> dict:
        return {"file": self.source, "summary": "volume", "axis": self.axis, "label": self.label,
                "confidence": self.confidence, "probabilities": self.probabilities, "slices": list(self.slices),
                "supporting_slices": list(self.supporting), "slice_count": self.slice_count,
                "warnings": list(self.warnings), "rule": self.rule, "notice": notice}


def summarise(source: str, axis: str, classes: Sequence[str], rows: Sequence[tuple[int, dict[str, float], str | None]],
              slice_count: int, warnings: Sequence[str] = (), vote: VolumeVote | None = None) -> VolumeSummary:
    """`rows`: (slice index, probabilities, label or None when abstained) for every slice classified."""
    vote = vote or VolumeVote()
    indices = tuple(index for index, _, _ in rows)
    labelled = [(index, probs, label) for index, probs, label in rows if label is not None]
    rule = (f"the tumour class with the highest mean probability when at least {vote.min_fraction:.0%} of the "
            f"labelled slices carry it, else {NO_TUMOUR}")
    if not labelled:
        return VolumeSummary(source, axis, None, {c: 0.0 for c in classes}, indices, (), slice_count,
                             tuple(warnings), rule)
    mean = np.mean([[probs[c] for c in classes] for _, probs, _ in labelled], axis=0)
    probabilities = {c: float(p) for c, p in zip(classes, mean)}
    tumours = [c for c in classes if c != NO_TUMOUR]
    label = NO_TUMOUR if NO_TUMOUR in classes else None
    if tumours:
        best = max(tumours, key=lambda c: probabilities[c])
        support = sum(1 for _, _, lab in labelled if lab == best)
        if support >= vote.needed(len(labelled)) or label is None:
            label = best
    supporting = tuple(index for index, _, lab in labelled if lab == label)
    return VolumeSummary(source, axis, label, probabilities, indices, supporting, slice_count, tuple(warnings),
                         rule)
