"""`classify --heatmap DIR`: one overlay PNG per classified scan, named so none collides, in a folder made by the
one output-folder rule (a non-empty folder is refused unless forced; force replaces only overlay PNGs).

The overlay is drawn over the scan as the model saw it (decoded and resized by the runtime, the same frame), in
the predicted class's map. Predictions from a model without a heatmap output get no file.
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import InputImageError
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
        path = self.out_dir / overlay_name(prediction.source, self.count, prediction.frame)
        self.count += 1
        caption = f"{prediction.label} {prediction.confidence:.2f}: where the model saw evidence for {prediction.label}"
        return write_overlay(path, pixels, heatmap, prediction.index, caption, force=True)
