"""The device-side API: `Classifier.from_bundle(path).predict("scan.jpg")`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from tumor_edge.errors import ModelError
from tumor_edge.runtime.backends import Backend, BackendOptions, open_backend
from tumor_edge.runtime.bundle import METADATA_FILE, ONNX_META_KEY, BundleMetadata
from tumor_edge.runtime.image import pil_to_rgb
from tumor_edge.runtime.preprocess import load_resized, resize_rgb, scale

ImageInput = Union[str, Path, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]
    source: str | None = None

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_dict(self) -> dict:
        return {"file": self.source, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read_onnx_metadata(path: Path) -> BundleMetadata:
    """The tumor-edge metadata an exported .onnx carries in its own metadata_props."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load this model ({str(err).splitlines()[0][:200]})", path) from err
    raw = meta.custom_metadata_map.get(ONNX_META_KEY)
    if not raw:
        raise ModelError("this .onnx file carries no tumor-edge metadata; pass its bundle folder instead", path)
    return BundleMetadata.from_dict(json.loads(raw), path)


class Classifier:
    """A model file plus the metadata that says how to feed it and read its output."""

    def __init__(self, backend: Backend, metadata: BundleMetadata):
        self.backend = backend
        self.metadata = metadata
        self.classes = list(metadata.classes)
        self.preprocessing = metadata.preprocessing
        h, w = backend.input_hw()
        spec = self.preprocessing
        if (h is not None and h != spec.height) or (w is not None and w != spec.width):
            raise ModelError(f"model input is {h}x{w} but its metadata says {spec.height}x{spec.width}",
                             backend.path)

    @classmethod
    def from_bundle(cls, path: str | Path, model_file: str | None = None,
                    options: BackendOptions | None = None) -> Classifier:
        """A bundle folder (optionally naming one of its files), a bundle's model file, or a lone .onnx."""
        path = Path(path)
        if not path.exists():
            raise ModelError("no such bundle or model file", path)
        if path.is_dir():
            metadata = BundleMetadata.read(path)
            name = model_file or metadata.default_model()
            model_path = path / name
            if not model_path.is_file():
                raise ModelError(f"bundle lists {name} but the file is missing", path)
            return cls(open_backend(model_path, options), metadata)
        if (path.parent / METADATA_FILE).is_file():
            return cls(open_backend(path, options), BundleMetadata.read(path.parent))
        if path.suffix.lower() == ".onnx":
            return cls(open_backend(path, options), read_onnx_metadata(path))
        raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)

    def _pixels(self, item: ImageInput) -> np.ndarray:
        spec = self.preprocessing
        if isinstance(item, (str, Path)):
            return load_resized(item, spec)
        if isinstance(item, Image.Image):
            return resize_rgb(pil_to_rgb(item), spec)
        array = np.asarray(item)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.shape[:2] != spec.size or array.dtype != np.uint8:
            if array.dtype != np.uint8:
                raise ValueError("array input must be uint8 RGB (H, W, 3); decode floats yourself")
            return resize_rgb(Image.fromarray(array[..., :3]), spec)
        return array[..., :3]

    def infer(self, batch_pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> probabilities (N, classes)."""
        raw = self.backend.run(scale(batch_pixels, self.preprocessing))
        if raw.shape[-1] != len(self.classes):
            raise ModelError(f"model gives {raw.shape[-1]} outputs but its metadata names "
                             f"{len(self.classes)} classes", self.backend.path)
        return softmax(raw) if self.metadata.output == "logits" else raw

    def _to_prediction(self, probs: np.ndarray, source: str | None) -> Prediction:
        index = int(np.argmax(probs))
        return Prediction(self.classes[index], index,
                          {c: float(p) for c, p in zip(self.classes, probs)}, source)

    def predict(self, item: ImageInput) -> Prediction:
        probs = self.infer(self._pixels(item)[None])[0]
        return self._to_prediction(probs, str(item) if isinstance(item, (str, Path)) else None)

    def predict_batch(self, items: Sequence[ImageInput]) -> list[Prediction]:
        """All items must be readable; `iter_predictions` is the fault-tolerant streaming variant."""
        if not items:
            return []
        probs = self.infer(np.stack([self._pixels(item) for item in items]))
        return [self._to_prediction(p, str(i) if isinstance(i, (str, Path)) else None)
                for p, i in zip(probs, items)]

    def predict_proba_files(self, paths: Iterable[Path], batch_size: int = 16) -> np.ndarray:
        """Probabilities for image files, in order; used by parity and evaluation (errors propagate)."""
        out = []
        chunk: list[np.ndarray] = []
        for path in paths:
            chunk.append(load_resized(path, self.preprocessing))
            if len(chunk) == batch_size:
                out.append(self.infer(np.stack(chunk)))
                chunk = []
        if chunk:
            out.append(self.infer(np.stack(chunk)))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
