"""Misbehaving ONNX models for the server's hardening tests (built with `onnx.helper`, no TensorFlow).

Each is the quadrant model of tests/runtime/models.py with one fault grafted on its output. The faults that a
server must catch at request time only show on some inputs: on a blank (all-zero) image the model is sound, so
a start-up check on a blank image passes, and a bright scan then brings the fault out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.runtime.models import SIZE, quadrant_metadata, quadrant_model
from tumor_edge.contracts.bundle import BundleMetadata, describe_file
from tumor_edge.contracts.preprocessing import Preprocessing

RAW_VALUE = 1.39e10  # a raw output, nowhere near a probability


def _graft(extra_nodes: list, extra_inits: list, output: str) -> onnx.ModelProto:
    """The quadrant model with `extra_nodes` after its softmax (`probs`), the graph's output renamed `output`."""
    metadata = quadrant_metadata(SIZE)
    model = quadrant_model(SIZE, metadata)
    graph = model.graph
    graph.node.extend(extra_nodes)
    graph.initializer.extend(extra_inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", "C"]))
    onnx.checker.check_model(model)
    return model


def _brightness(flag: str) -> tuple[list, list]:
    """Nodes computing `flag` = 1.0 when any input pixel is above zero, else 0.0 (a float scalar)."""
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "zero_f"], ["lit"]),
        helper.make_node("Cast", ["lit"], [flag], to=TensorProto.FLOAT),
    ]
    return nodes, [helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])]


def raw_output_model() -> onnx.ModelProto:
    """probs + RAW_VALUE on a lit image: the softmax on a blank one, raw values of ~1.39e10 on any scan."""
    nodes, inits = _brightness("flag")
    nodes += [helper.make_node("Mul", ["flag", "raw"], ["offset"]),
              helper.make_node("Add", ["probs", "offset"], ["out"])]
    inits += [helper.make_tensor("raw", TensorProto.FLOAT, [], [RAW_VALUE])]
    return _graft(nodes, inits, "out")


def extra_class_model() -> onnx.ModelProto:
    """(N, 4) on a blank image, (N, 5) on a lit one: the runtime raises a ModelError naming the model's path."""
    nodes, inits = _brightness("flag")
    nodes += [
        helper.make_node("Cast", ["flag"], ["flag_i"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["flag_i", "one_shape"], ["flag_1"]),
        helper.make_node("Concat", ["zeros3", "flag_1"], ["pads"], axis=0),
        helper.make_node("Pad", ["probs", "pads"], ["out"]),
    ]
    inits += [helper.make_tensor("one_shape", TensorProto.INT64, [1], [1]),
              helper.make_tensor("zeros3", TensorProto.INT64, [3], [0, 0, 0])]
    return _graft(nodes, inits, "out")


def slow_model(products: int) -> onnx.ModelProto:
    """The quadrant model's answers at a cost: a chain of `products` (rows, 512) x (512, 512) matrix products on
    the image, whose sum times 0 joins the probabilities (an orthogonal matrix keeps the values finite). The
    engine cannot fold the chain away (it depends on the input), so each image costs about `products` x 3 MFLOP."""
    rng = np.random.default_rng(0)
    weights, _ = np.linalg.qr(rng.standard_normal((512, 512)))
    nodes = [helper.make_node("Reshape", ["image", "rows_shape"], ["h0"])]
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"h{products}"], ["total"], keepdims=0),
              helper.make_node("Mul", ["total", "zero_f"], ["nothing"]),
              helper.make_node("Add", ["probs", "nothing"], ["out"])]
    inits = [helper.make_tensor("rows_shape", TensorProto.INT64, [2], [-1, 512]),
             helper.make_tensor("w", TensorProto.FLOAT, [512, 512], weights.astype(np.float32).ravel().tolist()),
             helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])]
    return _graft(nodes, inits, "out")


def five_class_model() -> onnx.ModelProto:
    """Five outputs for a bundle whose metadata names four classes: it cannot run on any image."""
    return quadrant_model(SIZE, quadrant_metadata(SIZE), classes=5)


def bundle_with(folder: Path, model: onnx.ModelProto, name: str = "model_fp32.onnx",
                metadata: BundleMetadata | None = None) -> Path:
    """A bundle folder holding `model` (listed with its sha256) and `metadata` (default: the quadrant's)."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = metadata or quadrant_metadata(SIZE)
    onnx.save(model, folder / name)
    metadata.models = {name: describe_file(folder / name, "onnx", "fp32")}
    metadata.write(folder)
    return folder


def named_classes_bundle(folder: Path, classes: list[str]) -> Path:
    """The quadrant model under other class names (metadata.json and the names the model carries agree)."""
    metadata = BundleMetadata(list(classes), Preprocessing(SIZE, SIZE))
    return bundle_with(folder, quadrant_model(SIZE, metadata), metadata=metadata)


def blank_and_lit() -> tuple[np.ndarray, np.ndarray]:
    """A blank and a lit input batch, for checking the models above in-process."""
    blank = np.zeros((1, SIZE, SIZE, 3), np.float32)
    return blank, blank + 200.0
