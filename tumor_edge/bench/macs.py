"""Multiply-accumulates per image of an ONNX graph's convolutions, matmuls and Gemm (nearly all of a CNN's
arithmetic), so an achieved GMAC/s can be set against the matmul ceiling. Without `onnx` the count is None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tumor_edge.errors import ModelError

Shape = list[int]

# op type -> (index of the data input, index of the weight input); the rest of the node's inputs don't matter.
_CONV_INPUTS: dict[str, tuple[int, int]] = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_INPUTS: dict[str, tuple[int, int]] = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def _conv_macs(node: Any, shapes: dict[str, Shape]) -> int:
    _, w_index = _CONV_INPUTS[node.op_type]
    weight, out = shapes.get(node.input[w_index]), shapes.get(node.output[0])
    if not weight or not out or len(out) < 3:
        raise ModelError(f"shape of {node.op_type} {node.name!r} unknown")
    # weight: (C_out, C_in / group, k...), out: (N, C_out, spatial...): each output element costs
    # C_in/group * prod(k) multiply-accumulates.
    return math.prod(out) * math.prod(weight[1:])


def _matmul_macs(node: Any, shapes: dict[str, Shape]) -> int:
    a_index, _ = _MATMUL_INPUTS[node.op_type]
    a, out = shapes.get(node.input[a_index]), shapes.get(node.output[0])
    if not a or not out:
        raise ModelError(f"shape of {node.op_type} {node.name!r} unknown")
    return math.prod(out) * a[-1]


def _gemm_macs(node: Any, shapes: dict[str, Shape]) -> int:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not a or not out:
        raise ModelError(f"shape of Gemm {node.name!r} unknown")
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if trans_a else a[-1]
    return math.prod(out) * k


COUNTERS: dict[str, Callable[[Any, dict[str, Shape]], int]] = {
    **{op: _conv_macs for op in _CONV_INPUTS},
    **{op: _matmul_macs for op in _MATMUL_INPUTS},
    "Gemm": _gemm_macs,
}


def _shape_table(model: Any) -> dict[str, Shape]:
    from onnx import numpy_helper

    shapes: dict[str, Shape] = {}
    graph = model.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [int(d.dim_value) for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape) if not init.dims else list(init.dims)
    return shapes


def count_macs(path: str | Path) -> int | None:
    """Multiply-accumulates for one image through the ONNX model at `path`; None when it cannot be counted."""
    per_node = macs_by_node(path)
    return None if per_node is None else sum(per_node.values())


def macs_by_node(path: str | Path) -> dict[str, int] | None:
    """Multiply-accumulates for one image, per Conv/MatMul/Gemm node name; None when they cannot be counted.
    Int8 files can hold more than their float twin: quantization may turn average pools into depthwise convs."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    try:
        model = onnx.load(str(path))
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1  # the dynamic batch: count one image
        model = shape_inference.infer_shapes(model)
        shapes = _shape_table(model)
        return {node.name or f"{node.op_type}_{i}": COUNTERS[node.op_type](node, shapes)
                for i, node in enumerate(model.graph.node) if node.op_type in COUNTERS}
    except Exception:  # protobuf DecodeError, onnx InferenceError, a missing shape: all mean "cannot count"
        return None
