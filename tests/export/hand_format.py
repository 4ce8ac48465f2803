"""Converters for a format the table does not have, used by test_format_table.py to show that adding a format
is one converter module plus one table row. `convert` writes a real ONNX file by hand (onnx.helper, not tf2onnx)
for the test's tiny Keras model (global average pooling, then a softmax dense layer); `broken` fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert(ctx, dst: Path) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dense = ctx.model.get_layer("head")
    kernel, bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    h, w = ctx.spec.height, ctx.spec.width
    nodes = [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "kernel"], ["logits0"]),
             helper.make_node("Add", ["logits0", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", kernel.shape[1]])]
    if len(ctx.model.outputs) > 1:  # export asks for the class activation map too: per-pixel logits of the head
        nodes += [helper.make_node("MatMul", ["image", "kernel"], ["map0"]),
                  helper.make_node("Add", ["map0", "bias"], ["heatmap"])]
        outputs.append(helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", h, w, kernel.shape[1]]))
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", h, w, 3])], outputs,
        initializer=[numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {"converter": "onnx.helper, by hand"}


def broken(ctx, dst: Path) -> dict[str, Any]:
    dst.write_bytes(b"half a file")
    raise RuntimeError("this converter always fails\nwith a second line nobody should see")
