"""Inference backends: onnxruntime always, LiteRT when `ai-edge-litert` is installed.

A registry keyed by file suffix, so adding a format is one entry. Every backend takes float32 NHWC batches in
the model's input scale and returns the raw float32 output (probabilities or logits, as the metadata says).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tumor_edge.errors import ModelError


class Backend(Protocol):
    """What the Classifier, parity and bench need from an inference engine."""

    path: Path
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, H, W, 3) -> float32 (N, classes)."""
        ...

    def input_hw(self) -> tuple[int | None, int | None]:
        """The (height, width) the model file declares, None where dynamic."""
        ...


@dataclass
class BackendOptions:
    threads: int | None = None  # None: the engine's default (all cores)
    providers: Sequence[str] | None = None  # onnxruntime execution providers; CPU by default
    optimization: str = "all"  # onnxruntime graph optimisation: "all" | "extended" | "basic" | "none"


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions):
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
            so.inter_op_num_threads = 1
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        so.graph_optimization_level = levels[options.optimization]
        so.log_severity_level = 3
        providers = list(options.providers) if options.providers else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise ModelError(f"onnxruntime cannot load this model ({_first_line(err)})", self.path) from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one image input, the model has {len(inputs)}", self.path)
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def input_hw(self) -> tuple[int | None, int | None]:
        if len(self.input_shape) != 4:
            return (None, None)
        h, w = self.input_shape[1], self.input_shape[2]
        return (h if isinstance(h, int) else None, w if isinstance(w, int) else None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)


class LiteRTBackend:
    name = "litert"

    def __init__(self, path: Path, options: BackendOptions):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ModelError("running .tflite files needs LiteRT: pip install 'tumor-edge[tflite]'", path) from err
        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=options.threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"LiteRT cannot load this model ({_first_line(err)})", self.path) from err
        self._batch = int(self.interpreter.get_input_details()[0]["shape"][0])

    def input_hw(self) -> tuple[int | None, int | None]:
        shape = self.interpreter.get_input_details()[0]["shape"]
        return (int(shape[1]), int(shape[2])) if len(shape) == 4 else (None, None)

    def _ensure_batch(self, n: int) -> None:
        if n != self._batch:
            index = self.interpreter.get_input_details()[0]["index"]
            shape = list(self.interpreter.get_input_details()[0]["shape"])
            shape[0] = n
            self.interpreter.resize_tensor_input(index, shape, strict=False)
            self.interpreter.allocate_tensors()
            self._batch = n

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        self._ensure_batch(batch.shape[0])
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            batch = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(inp["dtype"])
        self.interpreter.set_tensor(inp["index"], batch)
        self.interpreter.invoke()
        result = self.interpreter.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            result = (result.astype(np.float32) - zero) * scale
        return np.asarray(result, dtype=np.float32)


BACKENDS: dict[str, Callable[[Path, BackendOptions], Backend]] = {
    ".onnx": OnnxBackend,
    ".tflite": LiteRTBackend,
}


def open_backend(path: str | Path, options: BackendOptions | None = None) -> Backend:
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    factory = BACKENDS.get(path.suffix.lower())
    if factory is None:
        raise ModelError(f"unsupported model format {path.suffix!r}; expected one of {sorted(BACKENDS)}", path)
    return factory(path, options or BackendOptions())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
