"""Applying the preprocessing spec: decoded scan -> the model's input tensor.

The spec itself (`Preprocessing`, the names of resize filters and scalings) is a contract and lives in
`tumor_edge.contracts.preprocessing`; this module maps each name to the code that applies it. Training, parity
and the device all call these functions, so the pixels a model saw in training are the pixels it sees on the
device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.runtime.inputs import load_rgb

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


# name -> its function on float32 RGB 0..255: a new convention is one line here and one in the contract's
# SCALING_DESCRIPTIONS.
SCALINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _scale_none, "unit": _scale_unit, "symmetric": _scale_symmetric, "caffe": _scale_caffe,
    "torch": _scale_torch,
}


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
    return SCALINGS[spec.scaling](np.asarray(pixels, dtype=np.float32)).astype(np.float32, copy=False)


def preprocess_image(path: str | Path, spec: Preprocessing) -> np.ndarray:
    """A scan file to the model's float32 (H, W, 3) input."""
    return scale(load_resized(path, spec), spec)
