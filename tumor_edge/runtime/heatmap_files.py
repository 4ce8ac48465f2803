"""`classify --heatmap DIR`: one overlay PNG per classified scan, named so none collides, in a folder made by the
one output-folder rule (a non-empty folder is refused unless forced; force replaces only overlay PNGs).

The overlay is drawn over the scan as the model saw it (decoded and resized by the runtime, the same frame), in
the predicted class's map. Predictions from a model without a heatmap output get no file.

Each PNG is written whole or not at all, and never onto another's name: it is drawn into a hidden temporary file
in the folder, then hard-linked to its name, which fails if the name exists (two runs writing one folder take the
next free number instead of replacing each other's files), and the temporary file is removed even on Ctrl-C.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import InputImageError, OutputExistsError
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.classifier import Prediction
from tumor_edge.runtime.heatmap_overlay import write_overlay

HEATMAP_ROLE = "heatmap"
OVERLAY_SUFFIX = "_heatmap.png"


class HeatmapWriter:
    def __init__(self, out_dir: Path, spec: Preprocessing, force: bool = False):
        self.out_dir = prepare_out_dir(Path(out_dir), force, lambda name: name.endswith(OVERLAY_SUFFIX),
                                       "heatmap")
        self.spec = spec
        self.count = 0

    def write(self, prediction: Prediction) -> Path | None:
        """The overlay PNG of one prediction (None: no heatmap output, or an in-memory image)."""
        from tumor_edge.runtime.batch import decode_file
        from tumor_edge.runtime.heatmap_overlay import overlay_name

        heatmap = prediction.outputs.get(HEATMAP_ROLE)
        if heatmap is None or prediction.source is None:
            return None
        decoded = decode_file(prediction.source, self.spec, "all" if prediction.frame is not None else "middle")
        if decoded.failure is not None:
            raise InputImageError(f"could not re-read it for its heatmap ({decoded.failure.message})",
                                  prediction.source)
        frames = {frame: pixels for pixels, frame, _ in decoded.pixels}
        pixels = frames.get(prediction.frame, decoded.pixels[0][0])
        caption = f"{prediction.label} {prediction.confidence:.2f}: where the model saw evidence for {prediction.label}"
        tmp = self.out_dir / f".{os.getpid()}-{self.count}.png.tmp"
        try:
            write_overlay(tmp, pixels, heatmap, prediction.index, caption, force=True)
            return self._claim(tmp, lambda index: overlay_name(prediction.source, index, prediction.frame))
        finally:
            tmp.unlink(missing_ok=True)

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
