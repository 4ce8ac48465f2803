"""The preprocessing spec: what turns a decoded 8-bit RGB scan into the model's input tensor.

A `Preprocessing` is stored in every bundle's metadata.json and in every run's config.json. Only the names and
their meaning live here; `tumor_edge.runtime.preprocess` maps each name to the Pillow filter or numpy function
that applies it, so training, parity and the device run the same code for the same spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tumor_edge.errors import ConfigError

# Pillow resampling filters by the names stored in metadata.
RESIZE_NAMES: tuple[str, ...] = ("bilinear", "bicubic", "nearest", "lanczos")

# Input scalings by the names stored in metadata, with what each does to float32 RGB 0..255.
SCALING_DESCRIPTIONS: dict[str, str] = {
    "none": "float32 RGB 0..255, as decoded (the model scales inside its graph)",
    "unit": "x / 255 -> 0..1",
    "symmetric": "x / 127.5 - 1 -> -1..1 (Keras Inception/Xception preprocess_input)",
    "caffe": "RGB->BGR, minus ImageNet BGR mean (Keras ResNet/VGG preprocess_input)",
    "torch": "x / 255, minus ImageNet mean, over ImageNet std",
}
SCALING_NAMES: tuple[str, ...] = tuple(SCALING_DESCRIPTIONS)

# The value range each scaling yields, for the bundle's input description (None: not a simple range).
SCALING_RANGES: dict[str, list[float] | None] = {"none": [0, 255], "unit": [0, 1], "symmetric": [-1, 1],
                                                 "caffe": None, "torch": None}

# Decoded sizes beyond this are refused as absurd metadata (a 16k x 16k input is 3 GB as float32 per image).
MAX_SIDE = 4096


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a decoded 8-bit RGB scan and the float32 NHWC tensor a model takes."""

    height: int
    width: int
    resize: str = "bilinear"
    scaling: str = "none"
    color_mode: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_NAMES:
            raise ConfigError(f"unknown resize method {self.resize!r}; choose from {', '.join(RESIZE_NAMES)}")
        if self.scaling not in SCALING_DESCRIPTIONS:
            raise ConfigError(f"unknown scaling {self.scaling!r}; choose from {', '.join(SCALING_NAMES)}")
        if not (1 <= self.height <= MAX_SIDE and 1 <= self.width <= MAX_SIDE):
            raise ConfigError(f"image size must be 1..{MAX_SIDE} pixels a side, got {self.height}x{self.width}")
        if self.color_mode != "RGB":
            raise ConfigError(f"unsupported colour mode {self.color_mode!r}; bundles take RGB")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["description"] = (
            f"decode to 8-bit RGB (EXIF orientation applied; 16-bit/float min-max scaled), resize to "
            f"{self.width}x{self.height} with Pillow {self.resize} (no aspect preservation), float32, "
            f"scaling '{self.scaling}': {SCALING_DESCRIPTIONS[self.scaling]}"
        )
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        if not isinstance(data, dict):
            raise ConfigError(f"'preprocessing' must be an object, not {type(data).__name__}")
        height, width = data.get("height"), data.get("width")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (height, width)):
            raise ConfigError(f"'preprocessing' height and width must be whole numbers, not {height!r}, {width!r}")
        for key in ("resize", "scaling", "color_mode"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"'preprocessing.{key}' must be a string")
        return cls(height=int(height), width=int(width), resize=data.get("resize", "bilinear"),
                   scaling=data.get("scaling", "none"), color_mode=data.get("color_mode", "RGB"))
