"""The LiteRT backend (`ai-edge-litert`, an optional extra): .tflite files, float or fully int8, loaded from the
model's bytes as read once and checked (`Interpreter(model_content=...)`), never from a path LiteRT would open
itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import ModelFiles
from tumor_edge.errors import MissingExtraError, ModelError, first_line
from tumor_edge.runtime.backends import BackendOptions, read_lone


class LiteRTBackend:
    """A LiteRT Interpreter over one .tflite file; int8 inputs and outputs are (de)quantized here, so callers
    always see float32 in the model's input scale and every output in float32."""

    name = "litert"

    def __init__(self, path: Path, options: BackendOptions, files: ModelFiles | None = None):
        """`files`: the model's bytes as the caller read and checked them (None: read `path` here, once)."""
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise MissingExtraError("running .tflite files needs LiteRT: pip install 'tumor-edge[tflite]'",
                                    path) from err
        self.path = Path(path)
        data = files.data if files is not None else read_lone(self.path)
        self.providers: list[str] = []  # LiteRT picks its own delegates (XNNPACK on CPU)
        self.missing_providers: list[str] = []
        try:
            self.interpreter = Interpreter(model_content=data, num_threads=options.threads or None)
            self.interpreter.allocate_tensors()
        except Exception as err:  # ValueError, RuntimeError; flatbuffer errors on a damaged file
            raise ModelError(f"LiteRT cannot load this model ({first_line(err)})", self.path) from err
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise ModelError(f"expected one image input, the model has {len(details)}", self.path)
        self._input = details[0]
        self._batch = int(self._input["shape"][0])
        self.input_shape = [int(d) for d in self._input["shape"]]
        self._outputs = model_order(self.interpreter)
        self.output_names = [o["name"] for o in self._outputs]

    def metadata_props(self) -> dict[str, str]:
        return {}

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.shape[0] != self._batch:  # the interpreter's tensors are sized for one batch: resize to this one
            shape = list(self._input["shape"])
            shape[0] = batch.shape[0]
            self.interpreter.resize_tensor_input(self._input["index"], shape, strict=False)
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._batch = batch.shape[0]
        inp = self._input
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            batch = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(inp["dtype"])
        self.interpreter.set_tensor(inp["index"], batch)
        self.interpreter.invoke()
        results = []
        for out in self._outputs:
            result = self.interpreter.get_tensor(out["index"])
            if out["dtype"] in (np.int8, np.uint8):
                scale, zero = out["quantization"]
                result = (result.astype(np.float32) - zero) * scale
            results.append(np.asarray(result, dtype=np.float32))
        return results


def model_order(interpreter) -> list[dict]:
    """The output details in the model's own output order. LiteRT lists a converted model's outputs in its
    own order (a Keras model's [scores, heatmap] came back as [heatmap, scores]), so roles taken by index from
    metadata would swap. The order is recovered from the signature's keys ("output_0", "output_1", ...: Keras'
    convention) or else from the tensors' ":k" suffixes (TensorFlow's function-output index); a model offering
    neither keeps LiteRT's order."""
    details = list(interpreter.get_output_details())
    if len(details) < 2:
        return details
    by_index = {d["index"]: d for d in details}
    try:
        runner_outputs = interpreter.get_signature_runner().get_output_details()
    except (ValueError, RuntimeError, AttributeError):  # no (or several) signatures
        runner_outputs = {}
    keyed = {int(m.group(1)): d["index"] for k, d in runner_outputs.items() if (m := re.fullmatch(r"output_(\d+)", k))}
    if len(keyed) == len(details) and set(keyed.values()) == set(by_index):
        return [by_index[keyed[k]] for k in sorted(keyed)]
    suffixes = [re.fullmatch(r"(.*):(\d+)", d["name"]) for d in details]
    if all(suffixes) and len({m.group(1) for m in suffixes}) == 1:
        return [d for _, d in sorted(zip((int(m.group(2)) for m in suffixes), details), key=lambda t: t[0])]
    return details


BACKEND = LiteRTBackend
