"""`classify --heatmap DIR`: one overlay PNG per classified scan, named so none collides, in a folder made by the
one output-folder rule (a non-empty folder is refused unless forced; force replaces only overlay PNGs).

The overlay is drawn over the scan as the model saw it (decoded and resized by the runtime, the same frame), in
the predicted class's map, drawn by the method `tumor_edge.runtime.explain` picks: the exact class activation map
when the model gives one of at least 4x4 cells, else occlusion sensitivity through the model itself, so a model
without a class-activation head (a foreign ONNX model, a 96 px InceptionV3 whose map is one cell) gets a map
too. The caption and the PNG's "Method" text say which method drew it.

Each PNG is written whole or not at all, never onto another's name and never through a link someone planted in
the folder: it is drawn into a hidden temporary file that `mkstemp` creates under a random name (O_CREAT|O_EXCL,
mode 0600: an existing name, a symbolic link included, is never opened), then hard-linked to its name, which fails
if the name exists (two runs writing one folder take the next free number instead of replacing each other's
files), and the temporary file is removed even on Ctrl-C.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import InputImageError, OutputExistsError
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.classifier import Prediction
from tumor_edge.runtime.explain import ExplainSettings, Explanation, explain
from tumor_edge.runtime.heatmap_overlay import write_overlay

HEATMAP_ROLE = "heatmap"
OVERLAY_SUFFIX = "_heatmap.png"


class HeatmapWriter:
    def __init__(self, out_dir: Path, spec: Preprocessing, force: bool = False, classifier=None,
                 settings: ExplainSettings | None = None):
        """`classifier`: the model the agnostic methods run (without one, only a model's own CAM is drawn)."""
        self.out_dir = prepare_out_dir(Path(out_dir), force, lambda name: name.endswith(OVERLAY_SUFFIX),
                                       "heatmap")
        self.spec = spec
        self.classifier = classifier
        self.settings = settings or ExplainSettings()
        self.count = 0
        self.last: Explanation | None = None  # the map of the last PNG written (its method for the JSON)

    def write(self, prediction: Prediction, pixels=None) -> Path | None:
        """The overlay PNG of one prediction (None: an in-memory image, or no classifier and no CAM output).
        `pixels`: the scan as the model saw it, when the caller still has it (a volume's slice); else the file is
        decoded again."""
        from tumor_edge.runtime.heatmap_overlay import overlay_name

        if prediction.source is None or (self.classifier is None and HEATMAP_ROLE not in prediction.outputs):
            return None
        if pixels is None:
            pixels = self._pixels(prediction)
        settings = self.settings if self.classifier is not None else replace(self.settings, method="cam")
        explanation = explain(self.classifier, pixels, prediction.index, prediction.outputs, settings)
        caption = (f"{prediction.label} {prediction.confidence:.2f}: evidence for {prediction.label} "
                   f"({explanation.label})")
        fd, name = tempfile.mkstemp(suffix=".png.tmp", prefix=".", dir=self.out_dir)
        tmp = Path(name)
        try:
            os.close(fd)
            write_overlay(tmp, pixels, explanation.map, prediction.index, caption, force=True,
                          method=explanation.label)
            path = self._claim(tmp, lambda index: overlay_name(prediction.source, index, prediction.frame))
        finally:
            tmp.unlink(missing_ok=True)
        self.last = explanation
        return path

    def _pixels(self, prediction: Prediction):
        from tumor_edge.runtime.batch import decode_file

        decoded = decode_file(prediction.source, self.spec, "all" if prediction.frame is not None else "middle")
        if decoded.failure is not None:
            raise InputImageError(f"could not re-read it for its heatmap ({decoded.failure.message})",
                                  prediction.source)
        frames = {frame: pixels for pixels, frame, _ in decoded.pixels}
        return frames.get(prediction.frame, decoded.pixels[0][0])

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
