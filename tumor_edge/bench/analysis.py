"""Derived figures over recorded rows: ratios to the references, achieved GMAC/s as a fraction of the ceiling of
the file's own arithmetic, head-to-head tables of two engines, and the performance goals; and the MACs per image
those rates need, counted from an ONNX graph's convolutions, matmuls and Gemm (nearly all of a CNN's arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tumor_edge.bench.ceiling import ceiling_precision, flag_over_ceiling
from tumor_edge.errors import ModelError

Row = dict[str, Any]
# precision -> threads -> GMAC/s (see ceiling.ceiling_table)
Ceilings = dict[str, dict[int, float]]

REFERENCE_COLUMNS: dict[str, str] = {"vs_keras": "keras", "vs_onnx_fp32": "onnx-fp32"}


def _index(rows: list[Row]) -> dict[tuple[str, int, int], Row]:
    return {(r["format"], r["threads"], r["batch"]): r for r in rows}


def add_ratios(rows: list[Row]) -> None:
    """p50 of each row over the reference format's p50 at the same threads and batch (None where absent)."""
    index = _index(rows)
    for row in rows:
        for column, ref_key in REFERENCE_COLUMNS.items():
            ref = index.get((ref_key, row["threads"], row["batch"]))
            row[column] = row["p50_ms"] / ref["p50_ms"] if ref and ref["p50_ms"] > 0 else None


def achieved_gmacs(macs_per_image: int, batch: int, p50_ms: float) -> float:
    return macs_per_image * batch / (p50_ms / 1000.0) / 1e9


def add_rates(rows: list[Row], macs_per_image: int | None, ceilings: Ceilings) -> None:
    """Achieved GMAC/s at the p50 and its fraction of the ceiling of the row's arithmetic at the same thread
    count: `ceiling_precision` names that ceiling ("fp32" or "int8"), `ceiling_fraction` is the fraction (None
    where either is unknown); a row above its ceiling gets a `measurement_error` (ceiling.flag_over_ceiling)."""
    for row in rows:
        kind = ceiling_precision(row.get("precision", "fp32"))
        row["ceiling_precision"] = kind
        if not macs_per_image:
            row["gmacs"] = row["ceiling_fraction"] = None
            continue
        gmacs = achieved_gmacs(macs_per_image, row["batch"], row["p50_ms"])
        ceiling = ceilings.get(kind, {}).get(row["threads"])
        row["gmacs"] = gmacs
        row["ceiling_fraction"] = gmacs / ceiling if ceiling else None
    flag_over_ceiling(rows)


def head_to_head(rows: list[Row], left: str, right: str) -> list[Row]:
    """Two formats side by side at every (threads, batch) where both ran: p50s, left/right, and each one's
    fraction of its own ceiling."""
    index = _index(rows)
    out = []
    for (fmt, threads, batch), a in sorted(index.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        b = index.get((right, threads, batch))
        if fmt != left or b is None:
            continue
        out.append({"left": left, "right": right, "threads": threads, "batch": batch,
                    "left_p50_ms": a["p50_ms"], "right_p50_ms": b["p50_ms"],
                    "ratio": a["p50_ms"] / b["p50_ms"] if b["p50_ms"] > 0 else None,
                    "left_ceiling_fraction": a.get("ceiling_fraction"),
                    "right_ceiling_fraction": b.get("ceiling_fraction")})
    return out


@dataclass(frozen=True)
class Goal:
    """A performance goal: p50 of `numerator` over p50 of `denominator` at most `limit`."""

    name: str
    numerator: str
    denominator: str
    limit: float


GOALS: tuple[Goal, ...] = (
    Goal("ONNX fp32 vs Keras (tf.function)", "onnx-fp32", "keras", 0.45),
    Goal("ONNX fp32 vs LiteRT fp32", "onnx-fp32", "tflite-fp32", 0.80),
    Goal("ONNX int8 vs ONNX fp32", "onnx-int8", "onnx-fp32", 1.00),
    Goal("ONNX int8 vs LiteRT int8", "onnx-int8", "tflite-int8", 1.00),
)

# The int8 engines compared in the report's head-to-head table.
INT8_PAIR = ("onnx-int8", "tflite-int8")


def check_goals(rows: list[Row], threads: int, batch: int = 1, macs_per_image: int | None = None,
                ceilings: dict[str, float] | None = None) -> list[Row]:
    """Each goal at (threads, batch) where both formats were measured; with the MAC count and the ceilings at
    `threads`, also the fraction of its own ceiling the numerator would need (above 1: `reachable` False,
    beyond this machine's arithmetic whatever the engine does)."""
    index = _index(rows)
    out = []
    for goal in GOALS:
        num = index.get((goal.numerator, threads, batch))
        den = index.get((goal.denominator, threads, batch))
        if not num or not den:
            continue
        ratio = num["p50_ms"] / den["p50_ms"]
        kind = ceiling_precision(num.get("precision", "fp32"))
        entry = {**asdict(goal), "threads": threads, "batch": batch, "numerator_p50_ms": num["p50_ms"],
                 "denominator_p50_ms": den["p50_ms"], "ratio": ratio, "passed": ratio <= goal.limit,
                 "ceiling_precision": kind, "required_ceiling_fraction": None, "reachable": None}
        ceiling = (ceilings or {}).get(kind)
        if macs_per_image and ceiling:
            needed_gmacs = achieved_gmacs(macs_per_image, batch, goal.limit * den["p50_ms"])
            entry["required_ceiling_fraction"] = needed_gmacs / ceiling
            entry["reachable"] = needed_gmacs <= ceiling
        out.append(entry)
    return out


Shape = list[int]


def _conv_cost(node: Any, weight: Shape) -> int:
    """weight (C_out, C_in / group, k...): each output element costs C_in/group * prod(k) multiply-accumulates."""
    return math.prod(weight[1:])


def _gemm_cost(node: Any, a: Shape) -> int:
    return a[0] if next((attr.i for attr in node.attribute if attr.name == "transA"), 0) else a[-1]


# op type -> (the input whose shape gives what one output element costs, that cost); other inputs don't matter.
COUNTERS: dict[str, tuple[int, Callable[[Any, Shape], int]]] = {
    "Conv": (1, _conv_cost), "ConvInteger": (1, _conv_cost), "QLinearConv": (3, _conv_cost),
    **dict.fromkeys(("MatMul", "MatMulInteger", "QLinearMatMul"), (0, lambda node, a: a[-1])),
    "Gemm": (0, _gemm_cost),
}


def _node_macs(node: Any, shapes: dict[str, Shape]) -> int:
    index, cost = COUNTERS[node.op_type]
    operand, out = shapes.get(node.input[index]), shapes.get(node.output[0])
    if not operand or not out or (cost is _conv_cost and len(out) < 3):
        raise ModelError(f"shape of {node.op_type} {node.name!r} unknown")
    return math.prod(out) * cost(node, operand)


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
        return {node.name or f"{node.op_type}_{i}": _node_macs(node, shapes)
                for i, node in enumerate(model.graph.node) if node.op_type in COUNTERS}
    except Exception:  # protobuf DecodeError, onnx InferenceError, a missing shape: all mean "cannot count"
        return None
