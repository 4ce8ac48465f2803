"""A quadrant bundle whose model also gives a "heatmap" output, built with onnx.helper (no TensorFlow).

The map of class k is the image's brightness inside the quadrant class k reads (the quadrant model's own
evidence), at full resolution: (N, size, size, 4). Helpers only; tests live in test_trust_wiring.py and serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.runtime.models import quadrant_metadata, quadrant_model
from tumor_edge.contracts.bundle import OutputSpec, describe_file


def heatmap_quadrant_model(size: int = 32) -> onnx.ModelProto:
    model = quadrant_model(size)
    graph = model.graph
    half = size // 2
    masks = np.zeros((size, size, 4), np.float32)
    masks[:half, :half, 0] = masks[:half, half:, 1] = masks[half:, :half, 2] = masks[half:, half:, 3] = 1.0
    graph.initializer.append(helper.make_tensor("masks", TensorProto.FLOAT, [size, size, 4], masks.ravel().tolist()))
    graph.node.extend([helper.make_node("ReduceMean", ["image"], ["grey"], axes=[3], keepdims=1),
                       helper.make_node("Mul", ["grey", "masks"], ["heatmap"])])
    graph.output.append(helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", size, size, 4]))
    onnx.checker.check_model(model)
    return model


def make_heatmap_bundle(folder: Path, size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metadata = quadrant_metadata(size)
    metadata.extra_outputs = {"heatmap": OutputSpec("heatmap", 1, "class_activation_map", "test maps")}
    onnx.save(heatmap_quadrant_model(size), folder / "model_fp32.onnx")
    metadata.models = {"model_fp32.onnx": describe_file(folder / "model_fp32.onnx", "onnx", "fp32")}
    metadata.write(folder)
    return folder
