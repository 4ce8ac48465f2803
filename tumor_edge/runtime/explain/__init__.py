"""Explanations on the device, for any model: the exact class activation map where a bundle has one fine enough
to point, else a model-agnostic map (occlusion sensitivity or RISE) computed through the runtime's own
`Classifier` (numpy and the model's engine; no TensorFlow, no gradients). Every map says which method drew it.
Here: the methods (name -> function), the rule that picks one, and the cell grid and score the perturbing methods
share; `localisation` measures whether a map points at a known lesion.

Every method takes one `ExplainRequest` and returns a 2-D map of evidence for the requested class (higher: more).
"cam" reads the exact class activation map a bundle exported with a class-activation head gives as its "heatmap"
output (no extra inference); "occlusion" and "rise" perturb the scan and run the model again, so they explain any
model that gives class scores. "auto" takes the exact map when the model has one with at least MIN_CAM_CELLS x
MIN_CAM_CELLS cells, else occlusion: a 96 px InceptionV3 ends in a 1x1 map, one cell that cannot point anywhere,
and is never shown as evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tumor_edge.contracts.bundle import SCORES
from tumor_edge.errors import ConfigError

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


def log_odds(probabilities: np.ndarray, class_index: int) -> np.ndarray:
    """(N, classes) probabilities -> (N,) log-odds of `class_index`."""
    probs = np.asarray(probabilities, dtype=np.float64)
    others = np.delete(probs, class_index, axis=1).sum(axis=1)
    return np.log(probs[:, class_index] + _EPS) - np.log(others + _EPS)


def class_scores(classifier: Any, images: np.ndarray, class_index: int, batch_size: int) -> np.ndarray:
    """Log-odds of `class_index` for float32 (N, H, W, 3) images in pixel values (0..255), `batch_size` at a time
    through the classifier's model (its preprocessing scales them: a constant pixel value is a constant in the
    model's input space too)."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(log_odds(classifier.infer_outputs(images[start:start + batch_size])[SCORES], class_index))
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


def occlusion_map(classifier: Any, pixels: np.ndarray, class_index: int, grid: int = 8, batch_size: int = 16,
                  baseline: str | float = "mean") -> np.ndarray:
    """(grid, grid) float32: how much hiding each cell lowers `class_index`'s log-odds."""
    pixels = np.asarray(pixels)
    fill = baseline_value(pixels.astype(np.float32), baseline)
    base = class_scores(classifier, pixels[None].astype(np.float32), class_index, 1)[0]
    drops = []
    batch: list[np.ndarray] = []
    for image in occluded(pixels, grid, fill):
        batch.append(image)
        if len(batch) == batch_size:
            drops.append(base - class_scores(classifier, np.stack(batch), class_index, batch_size))
            batch = []
    if batch:
        drops.append(base - class_scores(classifier, np.stack(batch), class_index, batch_size))
    return np.concatenate(drops).reshape(grid, grid).astype(np.float32)


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


def rise_map(classifier: Any, pixels: np.ndarray, class_index: int, grid: int = 8, masks: int = 256,
             keep: float = 0.5, seed: int = 0, batch_size: int = 16, baseline: str | float = "mean") -> np.ndarray:
    """(H, W) float32 saliency of `class_index` at the scan's resolution."""
    image = np.asarray(pixels, dtype=np.float32)
    fill = baseline_value(image, baseline)
    shape = image.shape[:2]
    drawn = rise_masks(masks, grid, shape, keep, seed)
    scores = []
    for start in range(0, masks, batch_size):
        chunk = drawn[start:start + batch_size, ..., None]
        scores.append(class_scores(classifier, image * chunk + fill * (1 - chunk), class_index, batch_size))
    values = np.concatenate(scores)
    centred = values - values.mean()
    total = np.tensordot(centred, drawn, axes=1)
    return (total / (masks * keep)).astype(np.float32)


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
class ExplainRequest:
    classifier: Any  # a runtime Classifier (anything with infer_outputs)
    pixels: np.ndarray  # uint8 (H, W, 3): the scan as the model sees it (decoded, resized)
    class_index: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # the prediction's extra outputs (its "heatmap")
    settings: ExplainSettings = ExplainSettings()


@dataclass(frozen=True)
class Explanation:
    """A map of evidence for one class, and the method that drew it (said wherever the map is shown)."""

    method: str
    map: np.ndarray  # float32 (h, w)
    class_index: int

    @property
    def label(self) -> str:
        """E.g. "occlusion 8x8", "exact CAM 8x8", "RISE 96x96 (256 masks)"."""
        h, w = self.map.shape
        return f"{METHOD_TITLES.get(self.method, self.method)} {h}x{w}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "label": self.label, "class_index": self.class_index,
                "map": np.round(self.map.astype(np.float64), 4).tolist()}


def _cam(request: ExplainRequest) -> np.ndarray:
    heatmap = request.outputs.get(HEATMAP_ROLE)
    if heatmap is None:
        raise ConfigError("this model has no class-activation map output; use occlusion or rise")
    heatmap = np.asarray(heatmap, np.float32)
    return heatmap[..., request.class_index] if heatmap.ndim == 3 else heatmap


def _occlusion(request: ExplainRequest) -> np.ndarray:
    s = request.settings
    return occlusion_map(request.classifier, request.pixels, request.class_index, s.grid, s.batch_size, s.baseline)


def _rise(request: ExplainRequest) -> np.ndarray:
    s = request.settings
    return rise_map(request.classifier, request.pixels, request.class_index, s.grid, s.masks, s.keep, s.seed,
                    s.batch_size, s.baseline)


# name -> method. A new method is one function and one line here.
METHODS: dict[str, Callable[[ExplainRequest], np.ndarray]] = {"cam": _cam, "occlusion": _occlusion, "rise": _rise}
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
    request = ExplainRequest(classifier, np.asarray(pixels), class_index, outputs, settings)
    return Explanation(method, np.asarray(METHODS[method](request), np.float32), class_index)
