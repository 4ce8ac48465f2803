"""Explanations on the device, for any model: the exact class activation map where a bundle has one fine enough
to point, else a model-agnostic map (occlusion sensitivity or RISE) computed through the runtime's own
`Classifier` (numpy and the model's engine; no TensorFlow, no gradients). Every map says which method drew it.
"auto" takes the exact map only when it has at least MIN_CAM_CELLS x MIN_CAM_CELLS cells: a 96 px InceptionV3
ends in a 1x1 map, one cell that cannot point anywhere, and is never shown as evidence.

Localisation (where the truth is known): the pointing game (Zhang et al. 2016: the map's maximum within
`tolerance` of the lesion; the original's 15 px on ~300 px images is TOLERANCE_FRACTION, 5 %, of the longer side;
where several cells share the maximum, any of them on the lesion is a hit, and a flat map is a miss) and the
energy in the lesion (the share of the map's evidence, from its own minimum, on lesion pixels). Chance is the
share of pixels within the tolerance of the lesion; a lesion with no pixel left at the model's resolution is
excluded, not a miss.

Overlay PNGs (`classify --heatmap DIR`): the map is upsampled to the scan, stretched to its own range, coloured
blue (little evidence) to red (most) and blended over the grey scan, with the class, the method that drew the
map and the research-only notice written under the picture.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import SCORES
from tumor_edge.errors import ConfigError, OutputExistsError
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.postprocess import Prediction

HEATMAP_ROLE = "heatmap"
MIN_CAM_CELLS = 4
AUTO = "auto"
DEFAULT_AGNOSTIC = "occlusion"


# ---- the cell grid ---------------------------------------------------------------------------------------------------
# The cell grid explanations share: which pixels each cell of a (g_h, g_w) map covers, and a map spread back
# over the pixels cell by cell.
#
# Cell i of n pixels in g cells covers rows ceil(i*n/g) .. ceil((i+1)*n/g)-1, so pixel r lies in cell r*g//n: the
# occluder of a cell, the map's pixels and the localisation metrics agree on the same boundaries, also when n is not
# a multiple of g (299 px in 8 cells).

def cell_edges(n: int, cells: int) -> list[int]:
    """The cells + 1 pixel boundaries of `cells` cells over `n` pixels (each cell at least one pixel)."""
    if not 1 <= cells <= n:
        raise ConfigError(f"a grid of {cells} cells does not fit {n} pixels (1 to {n})")
    return [-(-i * n // cells) for i in range(cells + 1)]


def cell_of(n: int, cells: int) -> np.ndarray:
    """The cell index of each of `n` pixels."""
    return (np.arange(n) * cells) // n


def spread(cell_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (g_h, g_w) map as (H, W) pixels, each pixel holding its cell's value (no interpolation: a cell's value
    is what the method measured for exactly those pixels). A map already at (H, W) passes through."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    height, width = shape
    if cell_map.shape == (height, width):
        return cell_map
    if cell_map.ndim != 2:
        raise ConfigError(f"an explanation map must be 2-D, not {cell_map.shape}")
    return cell_map[np.ix_(cell_of(height, cell_map.shape[0]), cell_of(width, cell_map.shape[1]))]


# ---- the score the perturbing methods read ---------------------------------------------------------------------------
# The score every model-agnostic method perturbs: a class's log-odds from the runtime's own probabilities.
#
# A confident model's probability sits at 0.9999 whatever one patch of the scan shows, and float32 cannot tell
# 0.99991 from 0.99992; its log-odds log p_c - log(sum of the other p) keeps moving (the other classes' small
# probabilities are summed directly, never as 1 - p_c). Probabilities come from `Classifier.infer_outputs`, so a
# calibrated bundle's temperature, an int8 file, a TFLite file or a foreign ONNX model all read the same way.

_EPS = 1e-12  # a probability of exactly 0 (float32 underflow) is taken as 1e-12, not -inf


def class_scores(classifier: Any, images: np.ndarray, class_index: int, batch_size: int) -> np.ndarray:
    """Log-odds of `class_index` for float32 (N, H, W, 3) images in pixel values (0..255), `batch_size` at a time
    through the classifier's model (its preprocessing scales them: a constant pixel value is a constant in the
    model's input space too)."""
    out = []
    for start in range(0, len(images), batch_size):
        probs = np.asarray(classifier.infer_outputs(images[start:start + batch_size])[SCORES], dtype=np.float64)
        others = np.delete(probs, class_index, axis=1).sum(axis=1)
        out.append(np.log(probs[:, class_index] + _EPS) - np.log(others + _EPS))
    return np.concatenate(out) if out else np.zeros(0)


def baseline_value(pixels: np.ndarray, baseline: str | float) -> np.ndarray:
    """What hides a region: "mean" (the scan's mean colour: no new edge or brightness), "black", or a grey level."""
    if baseline == "mean":
        return pixels.reshape(-1, pixels.shape[-1]).mean(axis=0).astype(np.float32)
    if baseline == "black":
        return np.zeros(pixels.shape[-1], np.float32)
    return np.full(pixels.shape[-1], float(baseline), np.float32)


# ---- occlusion -------------------------------------------------------------------------------------------------------
# Occlusion sensitivity (Zeiler & Fergus 2014): hide one grid cell at a time, see how far the class's score falls.
#
# For a (g, g) grid the scan is run g*g + 1 times (batched): map[i, j] = score(scan) - score(scan with cell (i, j)
# set to the baseline colour), in log-odds. Positive: the cell held evidence for the class; about 0: the model
# did not look there. Any model that gives class scores can be explained this way (int8 files, TFLite, foreign ONNX
# models without a class-activation head); the cost is g*g + 1 inferences per scan.

def occluded(pixels: np.ndarray, grid: int, fill: np.ndarray) -> Iterator[np.ndarray]:
    """The scan with each cell hidden in turn, row by row (float32 (H, W, 3) each)."""
    height, width = pixels.shape[:2]
    rows, cols = cell_edges(height, grid), cell_edges(width, grid)
    for i in range(grid):
        for j in range(grid):
            image = pixels.astype(np.float32, copy=True)
            image[rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = fill
            yield image


def occlusion_map(classifier: Any, pixels: np.ndarray, class_index: int, outputs: dict, s: ExplainSettings
                  ) -> np.ndarray:
    """(s.grid, s.grid) float32: how much hiding each cell lowers `class_index`'s log-odds."""
    pixels = np.asarray(pixels)
    fill = baseline_value(pixels.astype(np.float32), s.baseline)
    base = class_scores(classifier, pixels[None].astype(np.float32), class_index, 1)[0]
    images = occluded(pixels, s.grid, fill)
    drops = []
    while batch := list(itertools.islice(images, s.batch_size)):
        drops.append(base - class_scores(classifier, np.stack(batch), class_index, s.batch_size))
    return np.concatenate(drops).reshape(s.grid, s.grid).astype(np.float32)


# ---- RISE ------------------------------------------------------------------------------------------------------------
# RISE (Petsiuk et al. 2018): random smooth masks, each weighted by the class score it leaves.
#
# N masks are drawn from a seeded generator (the same seed, the same masks, the same map): a (grid, grid) grid of
# cells kept with probability p, upsampled bilinearly to a cell larger than the scan and cropped at a random shift,
# so its edges fall anywhere. saliency(x) = sum_i (s_i - mean s) m_i(x) / (N p), with s_i the class's log-odds on
# the scan blended with the baseline colour by mask i. Centring the scores removes the constant every pixel would
# share. Cost: N inferences per scan, batched.

def rise_masks(count: int, grid: int, shape: tuple[int, int], keep: float, seed: int) -> np.ndarray:
    """(count, H, W) float32 masks in [0, 1]."""
    rng = np.random.default_rng(seed)
    height, width = shape
    cell_h, cell_w = -(-height // grid), -(-width // grid)
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    masks = np.empty((count, height, width), np.float32)
    for k in range(count):
        small = (rng.random((grid, grid)) < keep).astype(np.float32)
        big = np.asarray(Image.fromarray(small, mode="F").resize((up_w, up_h), Image.Resampling.BILINEAR))
        dy, dx = int(rng.integers(cell_h)), int(rng.integers(cell_w))
        masks[k] = big[dy:dy + height, dx:dx + width]
    return masks


def rise_map(classifier: Any, pixels: np.ndarray, class_index: int, outputs: dict, s: ExplainSettings) -> np.ndarray:
    """(H, W) float32 saliency of `class_index` at the scan's resolution."""
    image = np.asarray(pixels, dtype=np.float32)
    fill = baseline_value(image, s.baseline)
    drawn = rise_masks(s.masks, s.grid, image.shape[:2], s.keep, s.seed)
    scores = []
    for start in range(0, s.masks, s.batch_size):
        chunk = drawn[start:start + s.batch_size, ..., None]
        scores.append(class_scores(classifier, image * chunk + fill * (1 - chunk), class_index, s.batch_size))
    values = np.concatenate(scores)
    centred = values - values.mean()
    total = np.tensordot(centred, drawn, axes=1)
    return (total / (s.masks * s.keep)).astype(np.float32)


# ---- the registry ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExplainSettings:
    """How the model-agnostic methods run. `grid`: cells per side (occlusion: grid*grid + 1 inferences per scan;
    RISE: the masks' cell count). `masks`: RISE's mask count. `baseline`: what hides a region ("mean" colour of the
    scan, "black", or a grey level). `seed`: RISE's masks."""

    method: str = AUTO
    grid: int = 8
    batch_size: int = 16
    masks: int = 256
    keep: float = 0.5
    seed: int = 0
    baseline: str | float = "mean"

    def check(self) -> None:
        if self.method != AUTO and self.method not in METHODS:
            raise ConfigError(f"unknown explanation method {self.method!r}; choose {AUTO}, {', '.join(METHODS)}")
        if not 2 <= self.grid <= 64:
            raise ConfigError(f"the heatmap grid must be 2 to 64 cells per side, not {self.grid}")
        if self.masks < 1 or self.batch_size < 1 or not 0.0 < self.keep < 1.0:
            raise ConfigError("RISE needs at least one mask, a batch of at least one and 0 < keep < 1")


@dataclass(frozen=True)
class Explanation:
    """A map of evidence for one class, and the method that drew it (said wherever the map is shown)."""

    method: str
    map: np.ndarray  # float32 (h, w)

    @property
    def label(self) -> str:
        """E.g. "occlusion 8x8", "exact CAM 8x8", "RISE 96x96 (256 masks)"."""
        h, w = self.map.shape
        return f"{METHOD_TITLES.get(self.method, self.method)} {h}x{w}"


# Each method takes (classifier: anything with infer_outputs, pixels: the uint8 (H, W, 3) scan as the model sees
# it, class_index, outputs: the prediction's extra outputs, settings).

def _cam(classifier: Any, pixels: np.ndarray, class_index: int, outputs: dict, s: ExplainSettings) -> np.ndarray:
    heatmap = outputs.get(HEATMAP_ROLE)
    if heatmap is None:
        raise ConfigError("this model has no class-activation map output; use occlusion or rise")
    return class_map(heatmap, class_index)


# name -> method. A new method is one function and one line here.
METHODS: dict[str, Callable[..., np.ndarray]] = {"cam": _cam, "occlusion": occlusion_map, "rise": rise_map}
METHOD_TITLES = {"cam": "exact CAM", "occlusion": "occlusion", "rise": "RISE"}


def cam_cells(outputs: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """The (h, w) cells of a prediction's class activation map, None when it has none."""
    heatmap = outputs.get(HEATMAP_ROLE)
    if heatmap is None or np.ndim(heatmap) < 2:
        return None
    return int(np.shape(heatmap)[0]), int(np.shape(heatmap)[1])


def choose_method(requested: str, outputs: dict[str, np.ndarray]) -> str:
    """The method that will draw the map: `requested` itself (checked by `ExplainSettings.check`), or for "auto"
    the exact CAM when it has at least MIN_CAM_CELLS cells a side, else occlusion."""
    if requested != AUTO:
        return requested
    cells = cam_cells(outputs)
    return "cam" if cells is not None and min(cells) >= MIN_CAM_CELLS else DEFAULT_AGNOSTIC


def explain_prediction(classifier: Any, pixels: np.ndarray | None, class_index: int,
            outputs: dict[str, np.ndarray] | None = None, settings: ExplainSettings | None = None) -> Explanation:
    """The map of evidence for `class_index` on one scan (uint8 (H, W, 3) at the model's size), drawn by the
    method `settings.method` names or "auto" picks. `pixels` may be None when that method is the exact CAM, which
    reads the prediction's outputs only (serve then need not decode the upload again)."""
    settings = settings or ExplainSettings()
    settings.check()
    outputs = outputs or {}
    method = choose_method(settings.method, outputs)
    if pixels is None and method != "cam":
        raise ConfigError(f"the {METHOD_TITLES.get(method, method)} map needs the scan's pixels")
    drawn = METHODS[method](classifier, np.asarray(pixels), class_index, outputs, settings)
    return Explanation(method, np.asarray(drawn, np.float32))


# ---- localisation ----------------------------------------------------------------------------------------------------

TOLERANCE_FRACTION = 0.05


def tolerance_px(shape: tuple[int, int]) -> float:
    return TOLERANCE_FRACTION * max(shape)


def resize_mask(mask: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """A bool (H, W) mask at (height, width), resized as the scan was (the runtime's filter) and thresholded at
    half coverage."""
    height, width = size
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), resample)
    return np.asarray(image) >= 0.5


def near(mask: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    """The pixels within `tolerance` pixels (Euclidean, centre to centre; default 5 % of the longer side) of a
    lesion pixel. Offsets reach at most a side less one: a tolerance larger than the map reaches every pixel it can."""
    mask = np.asarray(mask, dtype=bool)
    tolerance = tolerance_px(mask.shape) if tolerance is None else tolerance
    out = mask.copy()
    h, w = mask.shape
    reach = int(np.floor(max(tolerance, 0.0)))
    for dy in range(-min(reach, h - 1), min(reach, h - 1) + 1):
        for dx in range(-min(reach, w - 1), min(reach, w - 1) + 1):
            if (dy or dx) and dy * dy + dx * dx <= tolerance * tolerance:
                src = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
                out[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)] |= src
    return out


def peaks(cell_map: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The pixels (row, column) a map points at: the centre of every cell holding its maximum; none for a flat
    map."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    if cell_map.ndim != 2 or not np.all(np.isfinite(cell_map)):
        raise ConfigError(f"an explanation map must be 2-D and finite, not {cell_map.shape}")
    if cell_map.max() == cell_map.min():
        return []
    rows, cols = cell_edges(shape[0], cell_map.shape[0]), cell_edges(shape[1], cell_map.shape[1])
    return [((rows[i] + rows[i + 1] - 1) // 2, (cols[j] + cols[j + 1] - 1) // 2)
            for i, j in zip(*np.nonzero(cell_map == cell_map.max()))]


def pointing_hit(cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """Whether a maximum of the map lies on the lesion or within `tolerance` px of it (default 5 % of the side)."""
    mask = np.asarray(mask, dtype=bool)
    points = peaks(cell_map, mask.shape)
    if not points:
        return False
    hit = near(mask, tolerance)
    return any(bool(hit[point]) for point in points)


def energy_in_lesion(cell_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's evidence on lesion pixels, the evidence counted from the map's minimum.

    Each method puts its zero somewhere else: occlusion's is "hiding this changed nothing" (and its values may be
    negative), RISE's values are mean scores that never reach zero, a CAM's sit on a logit offset. Counting from
    zero would make the same map score differently after adding a constant, and methods incomparable. The map
    minus its own minimum is the evidence above the least the map shows anywhere: the share is unchanged by
    adding a constant or scaling, so the figure compares across methods. A flat map shows no evidence anywhere
    and scores what a uniform map would: the lesion's area share."""
    mask = np.asarray(mask, dtype=bool)
    values = spread(cell_map, mask.shape)
    shifted = values - values.min()
    total = float(shifted.sum())
    return float(mask.mean()) if total <= 0 else float(shifted[mask].sum() / total)


def chance_hit(mask: np.ndarray, tolerance: float | None = None) -> float:
    """The pointing game a point dropped uniformly at random would score on this mask."""
    return float(near(mask, tolerance).mean())


def map_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps of one scan (e.g. the int8 file's and the fp32 file's); None if flat."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError(f"maps of different shapes cannot be compared ({a.shape} vs {b.shape})")
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class Tally:
    """Pointing-game hits, energies and chance, kept per class, and the lesions excluded because none of their
    pixels is left at the map's resolution; `summary` gives the figures per class and all."""

    scores: dict[str, list[tuple[bool, float, float]]] = field(default_factory=dict)  # per map: hit, energy, chance
    excluded: dict[str, int] = field(default_factory=dict)

    def add(self, class_name: str, cell_map: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
        """Score one map against its lesion mask (at the map's resolution); False when the lesion has no pixel
        there and was excluded."""
        scores = self.scores.setdefault(class_name, [])
        if not np.asarray(mask, dtype=bool).any():
            self.excluded[class_name] = self.excluded.get(class_name, 0) + 1
            return False
        scores.append((pointing_hit(cell_map, mask, tolerance), energy_in_lesion(cell_map, mask),
                       chance_hit(mask, tolerance)))
        return True

    @staticmethod
    def _figures(scores: list[tuple[bool, float, float]], excluded: int) -> dict[str, Any]:
        pointing, energy, chance = (float(np.mean(c)) for c in zip(*scores)) if scores else (None, None, None)
        return {"n": len(scores), "excluded": excluded, "pointing": pointing, "energy": energy, "chance": chance}

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {name: self._figures(scores, self.excluded.get(name, 0)) for name, scores in self.scores.items()}
        out["all"] = self._figures([s for v in self.scores.values() for s in v], sum(self.excluded.values()))
        return out


# ---- overlay PNGs ----------------------------------------------------------------------------------------------------

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


def overlay(scan_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The scan (uint8 (H, W, 3) or (H, W)) with the (h, w) map blended over it: the map upsampled bilinearly
    between cell centres, stretched to its own range (a flat map is all 0: no place stands out) and coloured
    along the ramp."""
    scan = np.asarray(scan_rgb)
    if scan.ndim == 2:
        scan = np.repeat(scan[..., None], 3, axis=-1)
    height, width = scan.shape[:2]
    cam = np.asarray(Image.fromarray(np.asarray(cam, np.float32), mode="F").resize((width, height), Image.BILINEAR))
    lo, hi = float(cam.min()), float(cam.max())
    values = ((cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)).ravel()
    ramp = [np.interp(values, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]  # clamped to the ramp's ends
    heat = np.stack(ramp, axis=-1).reshape(height, width, 3).astype(np.uint8)
    blended = (1 - alpha) * scan[..., :3].astype(np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def overlay_name(source: str | None, index: int, frame: int | None = None) -> str:
    """A safe, unique PNG name for the `index`-th result: its file's stem (characters other than letters,
    digits, '-', '_' and '.' replaced), the frame of a multi-frame file, and the index against collisions."""
    stem = Path(source).stem if source else "image"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:80] or "image"
    suffix = f"_f{frame}" if frame is not None else ""
    return f"{index:05d}_{stem}{suffix}{OVERLAY_SUFFIX}"


def write_overlay(path: Path | BinaryIO, scan_rgb: np.ndarray, heatmap: np.ndarray, class_index: int, caption: str,
                  force: bool = False, method: str | None = None) -> Path | BinaryIO:
    """Write one overlay PNG to a path (refusing to replace an existing file unless `force`) or to an open binary
    file (a temporary file written through the descriptor that created it, never reopened by name). Returns
    where it wrote. `method`: what drew the map (e.g. "occlusion 8x8"), kept as the PNG's "Method" text."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.exists() and not force:
            raise OutputExistsError("exists; pass force to replace it", path)
    image = overlay(scan_rgb, class_map(heatmap, class_index))
    width = max(image.width, 320)  # a caption strip under the picture: the class the map explains, and the notice
    canvas = Image.new("RGB", (width, image.height + 2 * _CAPTION_PX), (0, 0, 0))
    canvas.paste(image, ((width - image.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, image.height + 3), caption[:120], fill=(255, 255, 255))
    draw.text((4, image.height + _CAPTION_PX + 3), "research tool, not a diagnostic device", fill=(255, 200, 0))
    info = PngInfo()
    info.add_text("Disclaimer", RESEARCH_NOTICE)
    if method:
        info.add_text("Method", method)
    canvas.save(path, format="PNG", pnginfo=info)
    return path


# `classify --heatmap DIR`: one overlay PNG per classified scan, drawn over the pixels the model saw (no second
# decode). Each PNG is written whole or not at all, never onto another's name and never through a planted link:
# drawn into a temporary file `mkstemp` creates (O_EXCL, 0600), then hard-linked to its name, which fails if the
# name exists (two runs writing one folder take the next free number).

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
        # The temporary name starts with this thread's own prefix, so an interrupt that lands inside mkstemp,
        # after it made the file but before its name reached this frame, still leaves nothing behind.
        prefix = f".tumor-edge-{os.getpid()}-{threading.get_ident()}-"
        try:
            fd, name = tempfile.mkstemp(suffix=".png.tmp", prefix=prefix, dir=self.out_dir)
            with os.fdopen(fd, "wb") as out:  # through the descriptor mkstemp made: the name is never reopened
                write_overlay(out, pixels, explanation.map, prediction.index, caption, method=explanation.label)
            path = self._claim(Path(name), prediction)
        finally:
            for leftover in self.out_dir.glob(f"{prefix}*.png.tmp"):  # a planted link is unlinked, never followed
                leftover.unlink(missing_ok=True)
        self.last = explanation
        return path

    def _claim(self, tmp: Path, prediction: Prediction) -> Path:
        """Link the finished file to the first free name from this writer's count on (atomic, never replaces)."""
        while True:
            path = self.out_dir / overlay_name(prediction.source, self.count, prediction.frame)
            self.count += 1
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
            except OSError as err:
                raise OutputExistsError(f"cannot write it ({(err.strerror or str(err)).lower()})", path) from err
