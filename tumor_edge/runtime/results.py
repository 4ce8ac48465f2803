"""The values a prediction stream yields: a `Prediction` per classified picture, a `Failure` per input that could
not be classified (one corrupt scan never stops a batch). Plain data, imported by every stage and importing none.

A failure keeps its message and its exception, but none of the local variables of the traceback's frames: they
hold the partly decoded image. The traceback itself (file names and lines, for `--debug`) stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import InputImageError, TumorEdgeError
from tumor_edge.runtime.readers.base import release_frames


@dataclass(frozen=True)
class Prediction:
    """One classified picture: the winning label, every class's probability, and any further model outputs."""

    label: str
    index: int
    probabilities: dict[str, float]
    source: str | None = None
    frame: int | None = None  # 0-based frame of a multi-frame file, or slice of a volume along `axis`
    frame_count: int | None = None
    # Outputs beyond the class scores, by the role metadata gives them (e.g. "heatmap"): this picture's slice.
    outputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # Why this picture may not be what the model knows (input checks, feature distance); empty when none.
    warnings: tuple[str, ...] = ()
    heatmap_png: str | None = None  # where `classify --heatmap DIR` wrote its overlay
    heatmap_method: str | None = None  # what drew that overlay's map (e.g. "occlusion 8x8", "exact CAM 8x8")
    abstained: bool = False  # with `abstain`: a warned picture is given no label (probabilities kept)
    axis: str | None = None  # a volume's slice: the plane it was cut in (`frame` is then the slice index)

    ok = True  # Failure.ok is False: lets stream consumers branch without isinstance

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_dict(self) -> dict:
        """The row `classify --json` prints (a volume's slice names its axis, slice and slice count)."""
        data = {"file": self.source, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}
        if self.axis is not None:
            data.update(axis=self.axis, slice=self.frame, slice_count=self.frame_count)
        elif self.frame is not None:
            data.update(frame=self.frame, frames=self.frame_count)
        if self.abstained:
            data.update(label=None, confidence=None, abstained=True)
        if self.warnings:
            data["warnings"] = list(self.warnings)
        if self.heatmap_png is not None:
            data.update(heatmap_png=self.heatmap_png, heatmap_method=self.heatmap_method)
        if self.outputs:
            data["outputs"] = {role: np.asarray(value).tolist() for role, value in self.outputs.items()}
        return data


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified: `message` is the one line to show (it names the input)."""

    source: str
    message: str
    error: BaseException | None = field(default=None, compare=False, repr=False)

    ok = False

    def to_dict(self) -> dict:
        return {"file": self.source, "error": self.message}

    def exception(self) -> TumorEdgeError:
        """The error to raise for callers that stop at the first bad input (an InputImageError unless the
        decoder raised another tumor-edge error)."""
        if isinstance(self.error, TumorEdgeError):
            return self.error
        return InputImageError(self.message.removeprefix(f"{self.source}: "), self.source)


class Model(Protocol):
    """What the prediction stages need of a model (a runtime Classifier): the pipeline and the volume run take
    one, so the classifier calls them and they never import it."""

    preprocessing: Preprocessing
    postprocessing: Any  # a postprocess.PostProcessing
    classes: list[str]

    def predictions(self, batch_pixels: np.ndarray, items: Sequence[tuple[str | None, int | None, int | None]],
                    checked: Sequence[list[str] | None] | None = None, abstain: bool = False,
                    notes: Sequence[Sequence[str]] | None = None) -> list[Prediction | Failure]: ...


# Called with each prediction and the pixels the model saw; returns the prediction to give (an explanation's).
OnPixels = Callable[[Prediction, np.ndarray], Prediction]


def failure_of(source: str, err: BaseException, doing: str = "decoding") -> Failure:
    """The Failure for an exception met while reading `source`: a tumor-edge error says itself, anything else
    (a reader's bug on a hostile file) in one line; the traceback's frames are released (`release_frames`)."""
    release_frames(err)
    if isinstance(err, TumorEdgeError):
        return Failure(source, str(err), err)
    if isinstance(err, MemoryError):
        return Failure(source, f"{source}: out of memory while {doing}", err)
    return Failure(source, f"{source}: unexpected {type(err).__name__} while {doing} ({str(err)[:200]})", err)
