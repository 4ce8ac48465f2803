"""Heatmap overlay PNGs on the device: a map of evidence coloured over the scan it explains, and the writer that
puts one per classified scan into `classify --heatmap DIR`.

The map (the model's "heatmap" output or a model-agnostic one from `tumor_edge.runtime.explain`) is upsampled to
the scan, stretched to its own range, coloured blue (little evidence) to red (most) and blended over the grey
scan, with the class, the method that drew the map and the research-only notice written under the picture.
Pillow and numpy only.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.errors import ConfigError, OutputExistsError
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.explain import HEATMAP_ROLE, ExplainSettings, Explanation, explain_prediction
from tumor_edge.runtime.postprocess import Prediction

# (position, r, g, b): a jet-like ramp, so hot reads as red in print and on screen.
_RAMP = np.array([[0.0, 0, 0, 143], [0.125, 0, 0, 255], [0.375, 0, 255, 255], [0.625, 255, 255, 0],
                  [0.875, 255, 0, 0], [1.0, 128, 0, 0]], dtype=np.float32)
_CAPTION_PX = 28


def class_map(heatmap: np.ndarray, class_index: int) -> np.ndarray:
    """One class's (h, w) map from an image's (h, w, classes) heatmap (a (h, w) map passes through)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim == 2:
        return heatmap
    if heatmap.ndim != 3 or not 0 <= class_index < heatmap.shape[-1]:
        raise ConfigError(f"heatmap of shape {heatmap.shape} has no class {class_index}")
    return heatmap[..., class_index]


def normalise(cam: np.ndarray) -> np.ndarray:
    """Stretch to 0..1 over the map's own range (a flat map is all 0: no place stands out)."""
    lo, hi = float(cam.min()), float(cam.max())
    return (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (height, width) by bilinear interpolation of cell centres (Pillow, float mode)."""
    height, width = size
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def colourise(values: np.ndarray) -> np.ndarray:
    """0..1 -> uint8 RGB along the ramp."""
    flat = np.clip(values, 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(flat, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1)
    return rgb.reshape(*values.shape, 3).astype(np.uint8)


def overlay(scan_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The scan (uint8 (H, W, 3) or (H, W)) with the (h, w) map blended over it."""
    scan = np.asarray(scan_rgb)
    if scan.ndim == 2:
        scan = np.repeat(scan[..., None], 3, axis=-1)
    heat = colourise(normalise(upsample(np.asarray(cam, np.float32), scan.shape[:2])))
    blended = (1 - alpha) * scan[..., :3].astype(np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def with_caption(image: Image.Image, text: str) -> Image.Image:
    """The picture with a caption strip under it: which class the map explains, and the research notice."""
    width = max(image.width, 320)
    canvas = Image.new("RGB", (width, image.height + 2 * _CAPTION_PX), (0, 0, 0))
    canvas.paste(image, ((width - image.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, image.height + 3), text[:120], fill=(255, 255, 255))
    draw.text((4, image.height + _CAPTION_PX + 3), "research tool, not a diagnostic device", fill=(255, 200, 0))
    return canvas


def overlay_name(source: str | None, index: int, frame: int | None = None) -> str:
    """A safe, unique PNG name for the `index`-th result: its file's stem (characters other than letters,
    digits, '-', '_' and '.' replaced), the frame of a multi-frame file, and the index against collisions."""
    stem = Path(source).stem if source else "image"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:80] or "image"
    suffix = f"_f{frame}" if frame is not None else ""
    return f"{index:05d}_{stem}{suffix}_heatmap.png"


def write_overlay(path: Path | BinaryIO, scan_rgb: np.ndarray, heatmap: np.ndarray, class_index: int, caption: str,
                  force: bool = False, method: str | None = None) -> Path | BinaryIO:
    """Write one overlay PNG to a path (refusing to replace an existing file unless `force`) or to an open binary
    file (a temporary file written through the descriptor that created it, never reopened by name). Returns
    where it wrote. `method`: what drew the map (e.g. "occlusion 8x8"), kept as the PNG's "Method" text."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.exists() and not force:
            raise OutputExistsError("exists; pass force to replace it", path)
    image = with_caption(overlay(scan_rgb, class_map(heatmap, class_index)), caption)
    image.save(path, format="PNG", pnginfo=_notice(method))
    return path


def _notice(method: str | None = None):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Disclaimer", RESEARCH_NOTICE)
    if method:
        info.add_text("Method", method)
    return info


# `classify --heatmap DIR`: one overlay PNG per classified scan, named so none collides, in a folder made by the
# one output-folder rule (a non-empty folder is refused unless forced; force replaces only overlay PNGs).
#
# The overlay is drawn over the pixels the model saw (no second decode), in the map `tumor_edge.runtime.explain`
# picks, so a model without a fine class-activation map gets one too; the caption says which method drew it.
# Each PNG is written whole or not at all, never onto another's name and never through a planted link: it is drawn
# into a temporary file `mkstemp` creates (O_EXCL, 0600), then hard-linked to its name, which fails if the name
# exists (two runs writing one folder take the next free number), and the temporary file is removed even on Ctrl-C.

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
