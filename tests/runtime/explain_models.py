"""A model that looks at one image quadrant only, as a real ONNX file (onnx.helper, no TensorFlow), and its int8
form (onnxruntime's static QDQ quantization): what an explanation must point at is known by construction.
Helpers only; the tests are in test_explain.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.runtime.models import CLASSES, quadrant_image, quadrant_metadata
from tumor_edge.contracts.bundle import describe_file


def quadrant_rows(quadrant: int, size: int) -> tuple[slice, slice]:
    half = size // 2
    return (slice(0, half) if quadrant in (0, 1) else slice(half, size),
            slice(0, half) if quadrant in (0, 2) else slice(half, size))


def one_quadrant_model(quadrant: int, size: int = 32, gain: float = 0.01) -> onnx.ModelProto:
    """[N, size, size, 3] -> probabilities [N, 4]; class `quadrant`'s logit is the mean brightness of that
    quadrant times `gain`, every other logit 0: no pixel outside the quadrant can change any output. The gain keeps
    a bright quadrant's probability near 0.75 (logit 2.2), where the int8 file's 8-bit output still moves by a few
    steps (1/255 each) when one 1/16 of the quadrant is hidden; at 0.05 it is 0.99995, and int8 rounds it to 1."""
    weights = np.zeros((size, size, 3, len(CLASSES)), np.float32)
    rows, cols = quadrant_rows(quadrant, size)
    weights[rows, cols, :, quadrant] = gain / ((size // 2) ** 2 * 3)
    weights = weights.reshape(-1, len(CLASSES))
    nodes = [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    inits = [helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, size * size * 3]),
             helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist())]
    graph = helper.make_graph(nodes, "one_quadrant",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tumor-edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _int8(fp32: Path, out: Path, size: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": quadrant_image(q, size)[None].astype(np.float32)} for q in range(4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def one_quadrant_bundle(folder: Path, quadrant: int, size: int = 32, int8: bool = False) -> Path:
    """A bundle of the one-quadrant model: model_fp32.onnx, and model_int8.onnx when `int8`."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = quadrant_metadata(size)
    onnx.save(one_quadrant_model(quadrant, size), folder / "model_fp32.onnx")  # no metadata in it, as a foreign file
    metadata.models = {"model_fp32.onnx": describe_file(folder / "model_fp32.onnx", "onnx", "fp32")}
    if int8:
        _int8(folder / "model_fp32.onnx", folder / "model_int8.onnx", size)
        metadata.models["model_int8.onnx"] = describe_file(folder / "model_int8.onnx", "onnx", "int8")
    metadata.write(folder)
    return folder


def vgg_like_foreign_bundle(folder: Path, size: int = 16, quadrant: int = 3) -> Path:
    """A VGG-like foreign model in the form export gives a foreign ONNX file: NCHW, batch fixed at 1, Conv -> Relu
    -> MaxPool -> Flatten -> MatMul (no global pooling, so no class-activation head), wrapped to NHWC with a softmax
    appended by export's own `to_bundle_model`. Class `quadrant` reads only that quadrant of the pooled map."""
    from tumor_edge.export.foreign_onnx import inspect_onnx, to_bundle_model

    folder.mkdir(parents=True, exist_ok=True)
    half, pooled = size // 2, size // 4
    kernel = np.full((2, 3, 3, 3), 1.0 / 27, np.float32)
    weights = np.zeros((2, half, half, len(CLASSES)), np.float32)
    rows, cols = quadrant_rows(quadrant, half)
    weights[:, rows, cols, quadrant] = 0.01 / (2 * pooled * pooled)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    inits = [helper.make_tensor("k", TensorProto.FLOAT, list(kernel.shape), kernel.ravel().tolist()),
             helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1]),
             helper.make_tensor("w", TensorProto.FLOAT, [2 * half * half, len(CLASSES)],
                                weights.reshape(-1, len(CLASSES)).ravel().tolist())]
    graph = helper.make_graph(nodes, "vgg_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(CLASSES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "source.onnx")
    to_bundle_model(folder / "source.onnx", folder / "model_fp32.onnx",
                    inspect_onnx(folder / "source.onnx", len(CLASSES), size), append_softmax=True)
    (folder / "source.onnx").unlink()
    metadata = quadrant_metadata(size)
    metadata.models = {"model_fp32.onnx": describe_file(folder / "model_fp32.onnx", "onnx", "fp32")}
    metadata.write(folder)
    return folder
