"""The device-side API: `Classifier.from_bundle(path).predict("scan.jpg")`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from tumor_edge.contracts.bundle import METADATA_FILE, ONNX_META_KEY, BundleMetadata
from tumor_edge.errors import ModelError
from tumor_edge.runtime.backends import Backend, BackendOptions, open_backend
from tumor_edge.runtime.image import pil_to_rgb, to_uint8
from tumor_edge.runtime.preprocess import load_resized, resize_rgb, scale

if TYPE_CHECKING:
    from tumor_edge.runtime.batch import Failure

ImageInput = Union[str, Path, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One classified image: the winning label and every class's probability."""

    label: str
    index: int
    probabilities: dict[str, float]
    source: str | None = None
    frame: int | None = None  # 0-based frame of a multi-frame file (DICOM series), None for single images
    frame_count: int | None = None

    ok = True  # Failure.ok is False: lets stream consumers branch without isinstance

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_dict(self) -> dict:
        data = {"file": self.source, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}
        if self.frame is not None:
            data["frame"] = self.frame
            data["frames"] = self.frame_count
        return data


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def metadata_from_props(props: dict[str, str], path: Path) -> BundleMetadata:
    """The tumor-edge metadata an exported .onnx carries in its metadata_props."""
    raw = props.get(ONNX_META_KEY)
    if not raw:
        raise ModelError("this .onnx file carries no tumor-edge metadata; pass its bundle folder instead", path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelError(f"its tumor-edge metadata is not valid JSON ({err})", path) from err
    return BundleMetadata.from_dict(data, path)


def read_onnx_metadata(path: Path) -> BundleMetadata:
    """The tumor-edge metadata of a lone .onnx file (loads it without optimisation just to read it)."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load this model ({str(err).splitlines()[0][:200]})", path) from err
    return metadata_from_props(dict(meta.custom_metadata_map), Path(path))


def check_input_shape(backend: Backend, metadata: BundleMetadata) -> None:
    """Refuse a model whose declared input disagrees with the preprocessing its metadata promises."""
    spec = metadata.preprocessing
    shape = list(getattr(backend, "input_shape", None) or [])
    if shape and len(shape) != 4:
        raise ModelError(f"model input has rank {len(shape)} ({shape}); expected NHWC images", backend.path)
    if len(shape) == 4 and isinstance(shape[3], int) and shape[3] != 3:
        layout = " (channels-first? bundles are NHWC)" if shape[1] == 3 else ""
        raise ModelError(f"model input {shape} does not take 3-channel NHWC images{layout}", backend.path)
    h, w = backend.input_hw()
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"model input is {h}x{w} but its metadata says {spec.height}x{spec.width}",
                         backend.path)


class Classifier:
    """A model file plus the metadata that says how to feed it and read its output."""

    def __init__(self, backend: Backend, metadata: BundleMetadata):
        self.backend = backend
        self.metadata = metadata
        self.classes = list(metadata.classes)
        self.preprocessing = metadata.preprocessing
        check_input_shape(backend, metadata)

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
                listed = "lists" if name in metadata.models else "does not list"
                raise ModelError(f"no model file {name} in this bundle (metadata {listed} it)", path)
            return cls(open_backend(model_path, options), metadata)
        if model_file:
            raise ModelError("--model-file picks a file inside a bundle folder; --model names a file already",
                             path)
        if (path.parent / METADATA_FILE).is_file():
            return cls(open_backend(path, options), BundleMetadata.read(path.parent))
        if path.suffix.lower() == ".onnx":
            backend = open_backend(path, options)
            # The session just created holds the metadata_props: no second load to read them.
            return cls(backend, metadata_from_props(backend.metadata_props(), path))
        raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)

    @property
    def model_path(self) -> Path:
        """The file actually running (a pre-optimised twin of the requested one, when it was usable)."""
        return Path(getattr(self.backend, "loaded_path", self.backend.path))

    def _pixels(self, item: ImageInput) -> np.ndarray:
        spec = self.preprocessing
        if isinstance(item, (str, Path)):
            return load_resized(item, spec)
        if isinstance(item, Image.Image):
            return resize_rgb(pil_to_rgb(item), spec)
        array = np.asarray(item)
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError("array input must be integer pixels (uint8 RGB, or a 16-bit grey scan); "
                                 "scale float images to 0..255 uint8 yourself")
            array = to_uint8(array)  # 16-bit scans: min-max, as for 16-bit image files
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"array input must be (H, W), (H, W, 3) or (H, W, 4), not {array.shape}")
        if array.shape[:2] != spec.size:
            return resize_rgb(Image.fromarray(np.ascontiguousarray(array[..., :3])), spec)
        return array[..., :3]

    def infer(self, batch_pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> probabilities (N, classes)."""
        raw = self.backend.run(scale(batch_pixels, self.preprocessing))
        if raw.ndim != 2 or raw.shape[-1] != len(self.classes):
            raise ModelError(f"model gives output of shape {raw.shape} but its metadata names "
                             f"{len(self.classes)} classes", self.backend.path)
        return softmax(raw) if self.metadata.output == "logits" else raw

    def to_prediction(self, probs: np.ndarray, source: str | None, frame: int | None = None,
                      frame_count: int | None = None) -> Prediction:
        index = int(np.argmax(probs))
        return Prediction(self.classes[index], index, {c: float(p) for c, p in zip(self.classes, probs)},
                          source, frame, frame_count)

    _to_prediction = to_prediction  # older name, kept for callers

    def predict(self, item: ImageInput) -> Prediction:
        """One image (path, Pillow image or array); a multi-frame DICOM gives its middle frame."""
        probs = self.infer(self._pixels(item)[None])[0]
        return self.to_prediction(probs, str(item) if isinstance(item, (str, Path)) else None)

    def predict_batch(self, items: Sequence[ImageInput]) -> list[Prediction]:
        """All items must be readable; `iter_predictions` is the fault-tolerant streaming variant."""
        if not items:
            return []
        probs = self.infer(np.stack([self._pixels(item) for item in items]))
        return [self.to_prediction(p, str(i) if isinstance(i, (str, Path)) else None)
                for p, i in zip(probs, items)]

    def iter_predictions(self, paths: Iterable[str | Path], batch_size: int = 16, frames: str = "middle",
                         workers: int | None = None) -> Iterator[Prediction | Failure]:
        """Stream a Prediction or a Failure per image, in input order, batch by batch; bad files never stop it.

        `frames`: "middle" or "all" frames of multi-frame DICOM files. `workers`: decoding threads (default 2;
        0 decodes inline). Model errors (not file errors) still raise.
        """
        from tumor_edge.runtime.batch import iter_predictions

        return iter_predictions(self, paths, batch_size=batch_size, frames=frames, workers=workers)

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
