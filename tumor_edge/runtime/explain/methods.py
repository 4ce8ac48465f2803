"""The registry of explanation methods (name -> function) and the rule that picks one for a model and a scan.

Every method takes one `ExplainRequest` and returns a 2-D map of evidence for the requested class (higher: more).
"cam" reads the exact class activation map a bundle exported with a class-activation head gives as its "heatmap"
output (no extra inference); "occlusion" and "rise" perturb the scan and run the model again, so they explain any
model that gives class scores. "auto" takes the exact map when the model has one with at least MIN_CAM_CELLS x
MIN_CAM_CELLS cells, else occlusion: a 96 px InceptionV3 ends in a 1x1 map, one cell that cannot point anywhere,
and is never shown as evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tumor_edge.errors import ConfigError
from tumor_edge.runtime.explain.occlusion import occlusion_map
from tumor_edge.runtime.explain.rise import rise_map

HEATMAP_ROLE = "heatmap"
MIN_CAM_CELLS = 4
AUTO = "auto"
DEFAULT_AGNOSTIC = "occlusion"


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
