"""`classify --heatmap DIR`: one overlay PNG per classified scan, named so none collides, in a folder made by the
one output-folder rule (a non-empty folder is refused unless forced; force replaces only overlay PNGs).

The overlay is drawn over the pixels the model saw (no second decode), in the map `tumor_edge.runtime.explain`
picks, so a model without a fine class-activation map gets one too; the caption says which method drew it.
Each PNG is written whole or not at all, never onto another's name and never through a planted link: it is drawn
into a temporary file `mkstemp` creates (O_EXCL, 0600), then hard-linked to its name, which fails if the name
exists (two runs writing one folder take the next free number), and the temporary file is removed even on Ctrl-C.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from tumor_edge.errors import OutputExistsError
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.explain import ExplainSettings, Explanation, explain_prediction
from tumor_edge.runtime.explain.methods import HEATMAP_ROLE
from tumor_edge.runtime.heatmap_overlay import overlay_name, write_overlay
from tumor_edge.runtime.results import Prediction

OVERLAY_SUFFIX = "_heatmap.png"


class HeatmapWriter:
    def __init__(self, out_dir: Path, force: bool = False, classifier=None, settings: ExplainSettings | None = None):
        """`classifier`: the model the agnostic methods run (without one, only a model's own CAM is drawn)."""
        self.out_dir = prepare_out_dir(Path(out_dir), force, lambda name: name.endswith(OVERLAY_SUFFIX),
                                       "heatmap")
        self.classifier = classifier
        self.settings = settings or ExplainSettings()
        self.count = 0
        self.last: Explanation | None = None  # the map of the last PNG written (its method for the JSON)

    def write(self, prediction: Prediction, pixels: np.ndarray) -> Path | None:
        """The overlay PNG of one prediction over `pixels`, the scan as the model saw it (None: an in-memory image,
        or no classifier and no CAM output)."""
        if prediction.source is None or (self.classifier is None and HEATMAP_ROLE not in prediction.outputs):
            return None
        settings = self.settings if self.classifier is not None else replace(self.settings, method="cam")
        explanation = explain_prediction(self.classifier, pixels, prediction.index, prediction.outputs, settings)
        caption = (f"{prediction.label} {prediction.confidence:.2f}: evidence for {prediction.label} "
                   f"({explanation.label})")
        fd, name = tempfile.mkstemp(suffix=".png.tmp", prefix=".", dir=self.out_dir)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:  # through the descriptor mkstemp made: the name is never reopened
                write_overlay(out, pixels, explanation.map, prediction.index, caption, method=explanation.label)
            path = self._claim(tmp, lambda index: overlay_name(prediction.source, index, prediction.frame))
        finally:
            tmp.unlink(missing_ok=True)
        self.last = explanation
        return path

    def _claim(self, tmp: Path, name_of) -> Path:
        """Link the finished file to the first free name from this writer's count on (atomic, never replaces)."""
        while True:
            path = self.out_dir / name_of(self.count)
            self.count += 1
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            except OSError as err:
                raise OutputExistsError(f"cannot write it ({(err.strerror or str(err)).lower()})", path) from err
            return path
