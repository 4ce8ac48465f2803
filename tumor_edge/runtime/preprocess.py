"""The preprocessing contract: what turns a decoded scan into the model's input tensor.

A `Preprocessing` is stored in every bundle's metadata.json and in every run's config.json; training, parity and
the device all call `preprocess_image` with it, so the pixels a model saw in training are the pixels it sees on
the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tumor_edge.runtime.image import load_rgb

RESIZE_METHODS: dict[str, int] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _scale_none(x: np.ndarray) -> np.ndarray:
    return x


def _scale_unit(x: np.ndarray) -> np.ndarray:
    return x / np.float32(255.0)


def _scale_symmetric(x: np.ndarray) -> np.ndarray:
    return x / np.float32(127.5) - np.float32(1.0)


def _scale_caffe(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1] - _CAFFE_MEAN_BGR


def _scale_torch(x: np.ndarray) -> np.ndarray:
    return (x / np.float32(255.0) - _IMAGENET_MEAN) / _IMAGENET_STD


# name -> (function on float32 RGB 0..255, human description). A registry, so a new convention is one line.
SCALINGS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "none": (_scale_none, "float32 RGB 0..255, as decoded (the model scales inside its graph)"),
    "unit": (_scale_unit, "x / 255 -> 0..1"),
    "symmetric": (_scale_symmetric, "x / 127.5 - 1 -> -1..1 (Keras Inception/Xception preprocess_input)"),
    "caffe": (_scale_caffe, "RGB->BGR, minus ImageNet BGR mean (Keras ResNet/VGG preprocess_input)"),
    "torch": (_scale_torch, "x / 255, minus ImageNet mean, over ImageNet std"),
}


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a decoded 8-bit RGB scan and the float32 NHWC tensor a model takes."""

    height: int
    width: int
    resize: str = "bilinear"
    scaling: str = "none"
    color_mode: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"unknown resize method {self.resize!r}; choose from {sorted(RESIZE_METHODS)}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r}; choose from {sorted(SCALINGS)}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["description"] = (
            f"decode to 8-bit RGB (EXIF orientation applied; 16-bit/float min-max scaled), resize to "
            f"{self.width}x{self.height} with Pillow {self.resize} (no aspect preservation), float32, "
            f"scaling '{self.scaling}': {SCALINGS[self.scaling][1]}"
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            resize=data.get("resize", "bilinear"),
            scaling=data.get("scaling", "none"),
            color_mode=data.get("color_mode", "RGB"),
        )


def resize_rgb(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Resize a decoded RGB image to the model's size: uint8 array (H, W, 3)."""
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), RESIZE_METHODS[spec.resize])
    return np.asarray(image, dtype=np.uint8)


def load_resized(path: str | Path, spec: Preprocessing) -> np.ndarray:
    """A scan file as uint8 (H, W, 3) at the model's size; the cacheable half of preprocessing."""
    return resize_rgb(load_rgb(path), spec)


def scale(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 pixels (..., H, W, 3) to the float32 values the model takes."""
    return SCALINGS[spec.scaling][0](np.asarray(pixels, dtype=np.float32)).astype(np.float32, copy=False)


def preprocess_image(path: str | Path, spec: Preprocessing) -> np.ndarray:
    """A scan file to the model's float32 (H, W, 3) input."""
    return scale(load_resized(path, spec), spec)
