"""Graph rewrites around quantization: which nodes stay float by construction (classifier head, padded average
pools), and `keep_float`, which turns chosen nodes of a QDQ model back to float without re-quantizing (how the
sensitivity search tries hundreds of variants cheaply).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Ops walked back through from the graph output to find the classifier head that stays float.
HEAD_OPS = frozenset({"Softmax", "MatMul", "Gemm", "Add", "Reshape", "Flatten", "Squeeze", "Identity", "Mul",
                      "Relu", "Sigmoid", "Cast", "Dropout"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _replace(field, items) -> None:
    """Make the repeated protobuf `field` hold `items` (a list made before the field is cleared)."""
    del field[:]
    field.extend(items)


def head_nodes(model) -> list[str]:
    """Names of the nodes between the last feature op (pooling) and the graph output: the classifier head."""
    producers = {out: node for node in model.graph.node for out in node.output}
    head: list[str] = []
    frontier = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in seen or node.op_type not in HEAD_OPS:
            continue
        seen.add(node.name)
        head.append(node.name)
        frontier.extend(node.input)
    return head


def _valid_counts(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> np.ndarray:
    out = (size + pad_begin + pad_end - kernel) // stride + 1
    return np.array([min(i * stride - pad_begin + kernel, size) - max(i * stride - pad_begin, 0)
                     for i in range(out)], dtype=np.float32)


def float_average_pools(model) -> list[str]:
    """Rewrite padded AveragePool nodes so they stay float and fast; return the node names to keep float.

    onnxruntime's QLinearAveragePool (what DQ -> AveragePool -> Q fuses into) is many times slower than the float
    pool, and excluding the pool from quantization does not stop that fusion. So each `count_include_pad=0` pool
    becomes an equal `count_include_pad=1` pool times an exact per-position correction (kernel area / valid
    inputs), both excluded: no Q follows the pool, nothing fuses, only the convolutions run in int8.
    """
    from onnx import helper, numpy_helper

    shapes = _static_shapes(model, known_only=True)
    nodes, keep_float = [], []
    for node in model.graph.node:
        geometry = _pool_geometry(node, shapes) if node.op_type == "AveragePool" else None
        if geometry is None or geometry[4] is None:  # only padded pools that divide by the valid inputs
            nodes.append(node)
            continue
        correction = f"{node.name}__pad_correction"
        model.graph.initializer.append(numpy_helper.from_array(geometry[4], correction))
        output = node.output[0]
        node.output[0] = f"{output}__sum_over_area"
        _replace(node.attribute, [a for a in node.attribute if a.name != "count_include_pad"]
                 + [helper.make_attribute("count_include_pad", 1)])
        mul = helper.make_node("Mul", [node.output[0], correction], [output], name=f"{node.name}__pad_correct")
        nodes += [node, mul]
        keep_float += [node.name, mul.name]
    _replace(model.graph.node, nodes)
    return keep_float


def _pool_geometry(node, shapes: dict[str, list[int]]):
    """(shape, kernel, strides, pads, border correction or None) of an AveragePool this module can rewrite."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = shapes.get(node.input[0])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if (shape is None or len(shape) != 4 or not all(shape[1:]) or attrs.get("ceil_mode", 0) or len(pads) != 4
            or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")):
        return None
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    correction = None
    if any(pads) and not attrs.get("count_include_pad", 0):
        counts = np.outer(_valid_counts(shape[2], kh, sh, pads[0], pads[2]),
                          _valid_counts(shape[3], kw, sw, pads[1], pads[3]))
        correction = ((kh * kw) / counts).reshape(1, 1, *counts.shape).astype(np.float32)
    return shape, (kh, kw), (sh, sw), pads, correction


def depthwise_average_pools(model) -> int:
    """Rewrite AveragePool nodes as int8-friendly depthwise convolutions; return how many were rewritten.

    onnxruntime's QLinearAveragePool is slow, and a float pool inside the int8 chain costs as much again in
    layout changes. A depthwise Conv with weights 1/(kh*kw) is the same sum, runs as QLinearConv in the NHWC int8
    chain, and its int8 weight is exact (1/9 is 127 steps of (1/9)/127). `count_include_pad=0` border positions
    divide by fewer inputs: y = s + s * (area / valid - 1), where the factor minus one is 0 inside (exactly 0 in
    uint8) and 0.5 / 1.25 at 3x3 edges / corners (exact at scale 1.25/255): the interior is untouched.
    """
    from onnx import helper, numpy_helper

    shapes = _static_shapes(model, known_only=True)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        geometry = _pool_geometry(node, shapes) if node.op_type == "AveragePool" else None
        if geometry is None:
            nodes.append(node)
            continue
        shape, (kh, kw), strides, pads, correction = geometry
        channels, out = shape[1], node.output[0]
        weight = f"{node.name}__box"
        model.graph.initializer.append(numpy_helper.from_array(
            np.full((channels, 1, kh, kw), 1.0 / (kh * kw), np.float32), weight))
        summed = out if correction is None else f"{out}__box"
        nodes.append(helper.make_node("Conv", [node.input[0], weight], [summed], name=f"{node.name}__depthwise",
                                      group=channels, kernel_shape=[kh, kw], strides=list(strides), pads=pads))
        if correction is not None:
            factor = f"{node.name}__border_factor"
            model.graph.initializer.append(numpy_helper.from_array(correction - 1.0, factor))
            nodes += [helper.make_node("Mul", [summed, factor], [f"{out}__border"], name=f"{node.name}__border"),
                      helper.make_node("Add", [summed, f"{out}__border"], [out], name=f"{node.name}__corrected")]
        rewritten += 1
    _replace(model.graph.node, nodes)
    return rewritten


def _static_shapes(model, known_only: bool = False) -> dict[str, list[int | str]]:
    """Tensor name -> shape (ints where known, the symbol's name or "" where not; 0 instead with `known_only`) of a
    shape-inferred model."""
    return {vi.name: [d.dim_value if known_only or d.HasField("dim_value") else d.dim_param
                      for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}


def drop_identity_reshapes(model) -> list[str]:
    """Remove the Reshape nodes that do not change their input's shape; return their names.

    At a small input size a Keras model's last blocks have 1x1 feature maps, where the converter writes each
    NHWC <-> NCHW Transpose as a Reshape to [-1, C, 1, 1] of a tensor already [N, C, 1, 1]. They compute nothing,
    but onnxruntime's int8 layout pass cannot see through a Reshape: each becomes a Transpose + Reshape (+ Q/DQ)
    around the NHWC int8 convolutions. Only a Reshape to a constant equal to the input's static shape (the batch
    may be symbolic, the target's -1 or 0 there) is removed, never one that writes a graph output.
    """
    from onnx import numpy_helper

    shapes = _static_shapes(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    dropped: list[str] = []
    kept = []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        if node.op_type == "Reshape" and _is_identity_reshape(node, shapes, constants) \
                and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
            dropped.append(node.name)
            continue
        kept.append(node)
    if dropped:
        _replace(model.graph.node, kept)
        _replace(model.graph.value_info, [vi for vi in model.graph.value_info if vi.name not in rename])
        prune_dead_qdq(model)
    return dropped


def _is_identity_reshape(node, shapes: dict[str, list[int | str]], constants: dict[str, np.ndarray]) -> bool:
    if len(node.input) < 2 or node.input[1] not in constants:
        return False
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("allowzero", 0):
        return False
    source = shapes.get(node.input[0])
    target = [int(v) for v in constants[node.input[1]].reshape(-1)]
    if not source or len(source) != len(target) or not all(isinstance(d, int) and d > 0 for d in source[1:]):
        return False
    return source[1:] == target[1:] and (target[0] in (-1, 0) or source[0] == target[0])


def _used_taps(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> tuple[int, int, int] | None:
    """(first, last, output size) of the kernel taps along one axis that ever read a real input (not padding);
    None where the taps used are not a contiguous run."""
    out = (size + pad_begin + pad_end - kernel) // stride + 1
    used = [r for r in range(kernel) if any(0 <= i * stride - pad_begin + r < size for i in range(out))]
    if not used or used != list(range(used[0], used[-1] + 1)):
        return None
    return used[0], used[-1], out


def crop_padding_taps(model) -> list[str]:
    """Shrink each convolution's kernel to the taps that ever read a real input; return the nodes changed.

    At a small input size InceptionV3's last blocks run 3x3, 1x3 and 3x1 "same" convolutions over 1x1 feature
    maps: every tap but the centre only ever multiplies padding, so the centre tap alone gives the same outputs
    with 1/9 or 1/3 of the MACs, exactly in float and in int8 (padded uint8 is the zero point). Needs static
    spatial shapes; a weight may be an initializer or the DequantizeLinear of one (per-output-channel scales stay
    valid). Convolutions with dilations or auto_pad are left alone.
    """
    from onnx import helper, numpy_helper

    shapes = _static_shapes(model)
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    readers = Counter(name for node in model.graph.node for name in node.input)
    changed: list[str] = []
    stale: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        weight_name = node.input[1]
        dq = producers.get(weight_name)
        if dq is not None:
            if dq.op_type != "DequantizeLinear" or readers.get(weight_name, 0) != 1:
                continue
            weight_name = dq.input[0]
        weight = inits.get(weight_name)
        if (weight is None or readers.get(weight_name, 0) != 1 or shape is None or len(shape) != 4
                or not all(isinstance(d, int) and d > 0 for d in shape[2:]) or len(weight.dims) != 4
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in ("NOTSET", b"NOTSET")):
            continue
        kh, kw = weight.dims[2], weight.dims[3]
        sh, sw = attrs.get("strides", [1, 1])
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        rows = _used_taps(shape[2], kh, sh, pads[0], pads[2])
        cols = _used_taps(shape[3], kw, sw, pads[1], pads[3])
        if rows is None or cols is None or (rows[1] - rows[0] + 1, cols[1] - cols[0] + 1) == (kh, kw):
            continue
        new_pads = [(begin - first, (out - 1) * stride + last + 1 - size - begin)  # (before, after) per axis
                    for (first, last, out), size, stride, begin in ((rows, shape[2], sh, pads[0]),
                                                                    (cols, shape[3], sw, pads[1]))]
        if any(p < 0 for pair in new_pads for p in pair):
            continue
        array = numpy_helper.to_array(weight)[:, :, rows[0]:rows[1] + 1, cols[0]:cols[1] + 1]
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), weight.name))
        stale.add(node.input[1])  # a DequantizeLinear's output shape, recorded before the crop
        _replace(node.attribute, [a for a in node.attribute if a.name not in ("pads", "kernel_shape")] + [
            helper.make_attribute("kernel_shape", list(array.shape[2:])),
            helper.make_attribute("pads", [new_pads[0][0], new_pads[1][0], new_pads[0][1], new_pads[1][1]])])
        changed.append(node.name)
    _replace(model.graph.value_info, [vi for vi in model.graph.value_info if vi.name not in stale])
    return changed


def preprocess_for_quantization(src: Path, dst: Path) -> Path:
    """onnxruntime's `quant_pre_process`: symbolic shape inference and graph clean-up (needs sympy)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def quantized_nodes(qdq_model) -> list[str]:
    """Names of the compute nodes of a QDQ model that take at least one dequantized input, in graph order:
    the nodes that run in int8 once onnxruntime fuses DQ -> op -> Q, and the units the sensitivity search
    can hand back to float."""
    dq_outputs = {out for node in qdq_model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.name for node in qdq_model.graph.node
            if node.op_type not in QDQ_OPS and any(i in dq_outputs for i in node.input)]


def keep_float(qdq_model, fp32_model, names: Iterable[str]):
    """A copy of `qdq_model` in which the named nodes read float inputs again (their own fp32 inputs and
    weights), with the Q/DQ nodes and quantized weights nobody reads any more removed.

    The same graph `quantize_static(nodes_to_exclude=names)` makes (tested), without a re-quantization.
    quantize_static keeps node names and most tensor names, with two exceptions handled here: a weight or bias
    can be the name of its own DequantizeLinear output (the float initializer comes back under a new name),
    and an activation (Relu, Clip) that only clips is folded into the Q/DQ pair, its producer writing the
    activation's output name (a copy of the activation is put back in front of a float reader).
    """
    import onnx

    wanted = set(names)
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    originals = {node.name: node for node in fp32_model.graph.node if node.name in wanted}
    missing = wanted - originals.keys()
    if missing:
        raise ValueError(f"nodes not in the float model: {', '.join(sorted(missing))}")
    fp32_inits = {init.name: init for init in fp32_model.graph.initializer}
    fp32_producers = {out: node for node in fp32_model.graph.node for out in node.output}
    produced = {out for node in model.graph.node for out in node.output}
    have = {init.name for init in model.graph.initializer}
    present = {node.name for node in model.graph.node}
    added: list = []

    def float_init(name: str) -> str:
        new = f"{name}__float" if name in produced else name
        if new not in have:
            init = onnx.TensorProto()
            init.CopyFrom(fp32_inits[name])
            init.name = new
            model.graph.initializer.append(init)
            have.add(new)
        return new

    def float_input(name: str) -> str:
        if name in fp32_inits:
            return float_init(name)
        source = fp32_producers.get(name)
        if source is None or source.name in present:
            return name
        # Folded activation: `name` now holds its input; re-apply it for this float reader.
        restored = f"{name}__float"
        if restored not in produced:
            copy = onnx.NodeProto()
            copy.CopyFrom(source)
            copy.name = f"{source.name}__float"
            copy.input[0] = name
            for i in range(1, len(copy.input)):
                if copy.input[i] in fp32_inits:
                    copy.input[i] = float_init(copy.input[i])
            _replace(copy.output, [restored])
            added.append(copy)
            produced.add(restored)
        return restored

    for node in model.graph.node:
        if node.name in originals:
            _replace(node.input, [float_input(i) if i else i for i in originals[node.name].input])
    if added:  # keep the graph topologically sorted: each copy right after its input's producer
        nodes = list(model.graph.node)
        for copy in added:
            at = next((i for i, n in enumerate(nodes) if copy.input[0] in n.output), -1)
            nodes.insert(at + 1, copy)
        _replace(model.graph.node, nodes)
    prune_dead_qdq(model)
    return model


def int8_nodes(qdq_model) -> set[str]:
    """Nodes onnxruntime can run as int8 kernels: every input dequantized (DQ -> op) and the output quantized
    again (op -> Q), the pattern its QDQ fusions (QLinearConv, QLinearMatMul, ...) need. A node with DQ inputs
    whose output nobody quantizes runs in float on dequantized values."""
    dq_outputs = {o for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {n.input[0] for n in qdq_model.graph.node if n.op_type == "QuantizeLinear"}
    return {n.name for n in qdq_model.graph.node
            if n.op_type not in QDQ_OPS and n.input and n.input[0] in dq_outputs
            and all(o in q_inputs for o in n.output)}


def prune_dead_qdq(model) -> None:
    """Drop Q/DQ nodes whose outputs nobody reads (repeatedly), then initializers nobody reads."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for node in model.graph.node for i in node.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    _replace(model.graph.initializer, [init for init in model.graph.initializer if init.name in used])


def node_macs(model) -> dict[str, int]:
    """Multiply-accumulates per Conv/MatMul/Gemm node of a shape-inferred float model (0 where shapes are
    unknown): what keeping a node in float costs, as a share of the model's int8 work."""
    shapes = _static_shapes(model, known_only=True)
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    macs: dict[str, int] = {}
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w or not all(out[1:]) or not all(w):
            continue
        if node.op_type == "Conv":  # W is [C_out, C_in / group, kh, kw]: each output value costs prod(W[1:])
            macs[node.name] = int(np.prod(out[1:]) * np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            macs[node.name] = int(np.prod(out[1:]) * w[0])
    return macs
