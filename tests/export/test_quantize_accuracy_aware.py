"""Accuracy-aware ONNX int8 on a tiny model built so that naive int8 genuinely breaks it.

The model (onnx.helper, real onnxruntime, no mocks): NHWC image -> conv1 (1x1; channel 0 carries a +200 offset
plus the brightness, channels 1-2 the colour, ~0.1) -> ReLU -> conv2 (1x1, takes the offset off again) -> ReLU
-> conv3 (an ordinary blur) -> ReLU -> global average pool -> MatMul/Add -> Softmax. conv1's output is quantized
per tensor, so its uint8 range is [0, ~207]: a step of ~0.8 that wipes out the colour channels, while clipping
the range (Entropy) flattens the offset channel instead. Either way predictions flip; conv2 reading float input
repairs them, and that is what the sensitivity search must find.
"""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.contracts.preprocessing import Preprocessing

SIZE = 8


def _pixels(n: int, seed: int) -> np.ndarray:
    """Four well separated kinds of image, (dark | bright) x (reddish | bluish), with jitter and texture: the
    fp32 model has no near-ties, so any flip is quantization's doing."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 4, n)
    grey = np.where(kind // 2 == 1, 0.7, 0.3) + rng.normal(0, 0.02, n)
    rgb = np.repeat(grey[:, None], 3, axis=1)
    rgb[np.arange(n), np.where(kind % 2 == 0, 0, 2)] += 0.1
    pixels = rgb[:, None, None, :] + rng.normal(0, 0.01, (n, SIZE, SIZE, 3))
    return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)


def _outlier_model(path):
    """conv1 (1x1): channel 0 = 200 + 10 x brightness (the outlier), channels 1-2 = relu(R - B), relu(B - R)
    (~0.1); conv2 (1x1) takes 205 off channel 0 and amplifies the colour channels; conv3 blurs; pooled, a fixed
    head scores the four kinds. Min/max calibration rounds the colour channels to 0 (steps of ~0.8); clipping the range
    (Entropy) flattens channel 0 instead: either way half the decisions flip."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = np.zeros((3, 3, 1, 1), np.float32)
    w1[0, :, 0, 0] = 10 / 3
    w1[1, :, 0, 0] = [1, 0, -1]
    w1[2, :, 0, 0] = [-1, 0, 1]
    b1 = np.array([200, 0, 0], np.float32)
    w2 = np.diag([1.0, 10.0, 10.0]).astype(np.float32).reshape(3, 3, 1, 1)
    b2 = np.array([-205, 0, 0], np.float32)
    bright, hue = np.array([-1, -1, 1, 1], np.float32), np.array([1, -1, 1, -1], np.float32)
    w3 = (np.stack([bright, hue, -hue]) * 5).astype(np.float32)  # features (2 x bright, red, blue) -> kinds
    b3 = (-bright * 5).astype(np.float32)
    w4 = np.zeros((3, 3, 3, 3), np.float32)  # conv3: a 3x3 box blur per channel, an ordinary int8 layer
    w4[np.arange(3), np.arange(3)] = 1 / 9
    arrays = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w4": w4, "b4": np.zeros(3, np.float32), "w3": w3, "b3": b3}
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w4", "b4"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w3"], ["mm"], name="head"),
        helper.make_node("Add", ["mm", "b3"], ["logits"], name="head_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path, pixels, spec):
    from tumor_edge.export.quantize.scoring import probabilities

    return probabilities(path, pixels, spec, 64)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outlier")
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    val = _pixels(200, 2)
    fp32 = _outlier_model(folder / "model_fp32.onnx")
    reference = _run(fp32, val, spec)
    labels = reference.argmax(1).copy()
    labels[::7] = (labels[::7] + 1) % 4  # a realistic, imperfect model
    return folder, spec, fp32, _pixels(64, 1), val, labels, reference


def test_naive_int8_breaks_and_accuracy_aware_repairs_it(outlier):
    import onnx

    from tumor_edge.export.quantize import QuantizationConfig, quantize_onnx_int8, quantized_nodes
    from tumor_edge.export.quantize.graph import int8_nodes

    folder, spec, fp32, calib, val, labels, reference = outlier
    assert len(set(reference.argmax(1))) == 4  # a real classifier, not a constant
    work = folder / "work"
    work.mkdir()
    dst = folder / "model_int8.onnx"
    report = quantize_onnx_int8(fp32, dst, calib, val, labels, 4, spec, QuantizationConfig(), work, False)

    # Naive int8 breaks agreement whatever the calibration method...
    assert len(report.candidates) == 3
    assert all(c.agreement < 0.9 for c in report.candidates), [c.agreement for c in report.candidates]
    # ...the accuracy-aware run ends above the goal with a recorded float fallback...
    aware = report.to_dict()["accuracy_aware"]
    assert aware["holds"] and aware["final"]["agreement"] >= 0.995
    assert aware["naive"]["agreement"] < 0.9
    fallback = [f["node"] for f in aware["float_nodes"]]
    assert fallback == ["conv2"], aware["float_nodes"]
    assert "sensitivity rank 1" in aware["float_nodes"][0]["why"]
    assert [f["node"] for f in aware["also_float"]] == ["conv1"]  # its output now only feeds float conv2
    assert 0 < aware["float_mac_fraction"] < 0.5
    assert "conv2" in report.float_nodes and "softmax" in report.float_nodes
    assert any("accuracy-aware" in reason for reason in report.float_reasons)
    # ...and the shipped file is what was measured: conv1 still int8, conv2 float, agreement above the goal.
    shipped = onnx.load(str(dst))
    assert "conv3" in int8_nodes(shipped)
    assert "conv1" in quantized_nodes(shipped) and "conv2" not in quantized_nodes(shipped)
    probs = _run(dst, val, spec)
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.995
    assert list(work.iterdir()) == [] or all(p.suffix != ".onnx" or "pre" in p.name for p in work.iterdir())


def test_accuracy_aware_off_ships_the_naive_model(outlier):
    from tumor_edge.export.quantize import QuantizationConfig, quantize_onnx_int8

    folder, spec, fp32, calib, val, labels, reference = outlier
    work = folder / "work_off"
    work.mkdir()
    dst = folder / "naive_int8.onnx"
    report = quantize_onnx_int8(fp32, dst, calib, val, labels, 4, spec,
                                QuantizationConfig(methods=("minmax",), accuracy_aware=False), work, False)
    assert report.accuracy_aware is None and "conv2" not in report.float_nodes
    assert np.mean(_run(dst, val, spec).argmax(1) == reference.argmax(1)) < 0.9


def test_fallback_stops_where_int8_would_lose_its_speed(outlier):
    """When the goal needs more of the int8 work in float than max_float_mac_fraction allows, the search says
    the goal was NOT met (the parity gate decides) instead of quietly shipping a float model called int8."""
    from tumor_edge.export.quantize import QuantizationConfig, quantize_onnx_int8

    folder, spec, fp32, calib, val, labels, reference = outlier
    work = folder / "work_capped"
    work.mkdir()
    dst = folder / "capped_int8.onnx"
    config = QuantizationConfig(methods=("minmax",), max_float_mac_fraction=0.05)  # conv2 is 9 % of the MACs
    report = quantize_onnx_int8(fp32, dst, calib, val, labels, 4, spec, config, work, False)
    aware = report.accuracy_aware
    assert aware["holds"] is False and "NOT met" in aware["outcome"] and "5%" in aware["stopped"]
    assert aware["float_nodes"] == [] and "conv2" not in report.float_nodes
    assert np.mean(_run(dst, val, spec).argmax(1) == reference.argmax(1)) < 0.9


def test_a_search_that_cannot_meet_its_goal_ships_the_candidate_nearest_it(outlier):
    """An unreachable goal (agreement above 100 %): conv2 float comes nearest; more float nodes that bring the
    goal no closer are not shipped (they cost int8 speed for nothing), and the search stops after stall_steps of
    them instead of running on to the MAC cap."""
    from tumor_edge.export.quantize import ParityGoal, QuantizationConfig, quantize_onnx_int8, quantized_nodes

    folder, spec, fp32, calib, val, labels, reference = outlier
    work = folder / "work_unreachable"
    work.mkdir()
    dst = folder / "unreachable_int8.onnx"
    config = QuantizationConfig(methods=("minmax",), goal=ParityGoal(min_agreement=1.01), max_float_mac_fraction=1.0,
                                stall_steps=2)
    aware = quantize_onnx_int8(fp32, dst, calib, val, labels, 4, spec, config, work, False).accuracy_aware
    assert aware["holds"] is False and "NOT met" in aware["outcome"]
    assert [s["float_nodes"] for s in aware["steps"]] == [1, 2, 3], aware["steps"]
    assert "2 steps in a row brought the goal no closer" in aware["stopped"], aware["stopped"]
    assert [f["node"] for f in aware["float_nodes"]] == ["conv2"], aware["float_nodes"]
    assert "conv2" not in quantized_nodes(__import__("onnx").load(str(dst)))
    assert np.mean(_run(dst, val, spec).argmax(1) == reference.argmax(1)) >= 0.995


def test_keep_float_gives_the_node_float_inputs_which_nodes_to_exclude_cannot(outlier, tmp_path):
    """Why the search rewrites the QDQ graph instead of passing nodes_to_exclude to quantize_static: excluding
    conv2 (even with the ReLU quantize_static folds in front of it) leaves the Q/DQ pair on conv1's output, the
    outlier-dominated range, in conv2's way. The rewrite feeds conv2 the float tensor (re-applying the folded
    ReLU), which is the same as excluding conv1, relu1 and conv2 altogether; conv1 keeps int8 weights and input
    but, its output no longer quantized, runs in float, and int8_nodes says so."""
    import onnx

    from tumor_edge.export.quantize import QuantizationConfig, collect_ranges, keep_float, quantize_with_ranges
    from tumor_edge.export.quantize.graph import int8_nodes

    _, spec, fp32, calib, val, _, reference = outlier
    config = QuantizationConfig(methods=("minmax",))
    ranges = collect_ranges(fp32, calib, spec, config, tmp_path, False)["minmax"]

    def quantized(exclude):
        return quantize_with_ranges(fp32, tmp_path / f"{len(exclude)}.onnx", "minmax", ranges, config, exclude,
                                    tmp_path)

    full = onnx.load(str(quantized([])))
    rewritten = keep_float(full, onnx.load(str(fp32)), ["conv2"])
    for exclude in (["conv2"], ["relu1", "conv2"]):
        assert np.mean(_run(quantized(exclude), val, spec).argmax(1) == reference.argmax(1)) < 0.9
    np.testing.assert_allclose(_run(rewritten, val, spec), _run(quantized(["conv1", "relu1", "conv2"]), val, spec),
                               atol=1e-4)
    assert np.mean(_run(rewritten, val, spec).argmax(1) == reference.argmax(1)) == 1.0
    assert {"conv1", "conv2"} <= int8_nodes(full) and not {"conv1", "conv2"} & int8_nodes(rewritten)
    # Nothing dangling: every node left is read, and conv2's quantized weights are gone.
    used = {i for n in rewritten.graph.node for i in n.input} | {o.name for o in rewritten.graph.output}
    assert all(any(o in used for o in n.output) for n in rewritten.graph.node)
    assert "w2_quantized" not in {i.name for i in rewritten.graph.initializer}


def test_the_weight_range_is_measured_on_validation_not_read_from_the_cpu(outlier, monkeypatch):
    """The bundle runs on other CPUs than the one that exports: the same validation images give the same weight
    range whether the exporting CPU has VNNI or not, every candidate range is scored and recorded, and the kept one
    is the least lossy."""
    from tumor_edge import machine
    from tumor_edge.export.quantize import WEIGHT_RANGES, CandidateScore, QuantizationConfig, quantize_onnx_int8

    folder, spec, fp32, calib, val, labels, reference = outlier
    chosen = {}
    for cpu, flags in {"avx2": {"sse4_2", "avx2", "fma"}, "vnni": {"avx2", "avx512f", "avx512_vnni"}}.items():
        monkeypatch.setattr(machine, "cpu_flag_set", lambda flags=flags: set(flags))
        work = folder / f"work_range_{cpu}"
        work.mkdir()
        config = QuantizationConfig(methods=("minmax",), accuracy_aware=False)
        report = quantize_onnx_int8(fp32, folder / f"range_{cpu}.onnx", calib, val, labels, 4, spec, config, work,
                                    False)
        record = report.to_dict()["weight_range"]
        scored = {c["method"].split("/")[1]: c for c in record["candidates"]}
        assert set(scored) | set(record.get("skipped", {})) == set(WEIGHT_RANGES) and {"s8", "s8-7bit"} <= set(scored)
        best = min((CandidateScore(**c) for c in record["candidates"]),
                   key=lambda c: c.loss_key(CandidateScore(**report.reference)))
        assert record["chosen"] == best.method.split("/")[1] and "validation images" in record["why"]
        row = WEIGHT_RANGES[record["chosen"]]
        assert report.config["reduce_range"] is row.reduce_range and report.config["weight_type"] == row.weight_type
        chosen[cpu] = record["chosen"]
    assert chosen["avx2"] == chosen["vnni"]


def test_without_validation_images_the_range_that_saturates_nowhere_ships(outlier):
    from tumor_edge.export.quantize import QuantizationConfig, quantize_onnx_int8

    folder, spec, fp32, calib, *_ = outlier
    work = folder / "work_no_val"
    work.mkdir()
    report = quantize_onnx_int8(fp32, folder / "no_val.onnx", calib, None, None, 4, spec,
                                QuantizationConfig(methods=("minmax",)), work, False)
    assert report.weight_range["chosen"] == "s8-7bit" and report.config["reduce_range"] is True
    assert QuantizationConfig(reduce_range=False).range_candidates() == ("s8",)


@pytest.mark.parametrize("pads, strides, include_pad", [([1, 1, 1, 1], [1, 1], 0), ([0, 0, 0, 0], [2, 2], 0),
                                                         ([1, 1, 1, 1], [2, 2], 1)])
def test_depthwise_average_pools_keep_outputs_and_quantize_closely(tmp_path, pads, strides, include_pad):
    """Average pools become depthwise convs (+ a border factor): the same numbers in float, and in int8 within
    the roundings of the input and the output (the border factors are exact in uint8)."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    from tumor_edge.export.quantize import QuantizationConfig, quantize_with_ranges
    from tumor_edge.export.quantize.graph import depthwise_average_pools
    from tumor_edge.export.quantize.scoring import session

    pool = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=strides,
                            pads=pads, count_include_pad=include_pad)
    graph = helper.make_graph([pool], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.random.default_rng(0).uniform(0, 1, (1, 4, 9, 7)).astype(np.float32)
    before = session(model).run(None, {"x": x})[0]
    assert depthwise_average_pools(model) == 1
    assert "AveragePool" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], before, atol=1e-6)
    onnx.save(model, str(tmp_path / "dw.onnx"))
    # Exact ranges of every tensor on this input, as calibration would find them.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in model.graph.node for o in n.output if o != "y"]
    probe.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])
    values = dict(zip(["y", *names], session(probe).run(None, {"x": x}))) | {"x": x}
    ranges = TensorsData(CalibrationMethod.MinMax, {n: (np.float32(min(0, v.min())), np.float32(max(0, v.max())))
                                                    for n, v in values.items()})
    config = QuantizationConfig(methods=("minmax",))
    q = quantize_with_ranges(tmp_path / "dw.onnx", tmp_path / "dw_int8.onnx", "minmax", ranges, config, [], tmp_path)
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(q)).graph.node}
    got = session(q).run(None, {"x": x})[0]
    out_step, in_step = values["y"].max() / 255, 1 / 255
    assert np.abs(got - before).max() <= out_step + in_step  # an output rounding, a (mostly averaged) input one


def test_fallback_schedule_and_focus_images():
    from tumor_edge.export.quantize.sensitivity import fallback_schedule, focus_indices

    assert fallback_schedule(1) == [1]
    assert fallback_schedule(5) == [1, 2, 3, 4, 5]
    assert fallback_schedule(140) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 140]
    reference = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.25, 0.75], [0.5, 0.5], [0.1, 0.9]])
    # flipped ones first (1 and 4), then the largest shift (2): returned in image order
    assert focus_indices(probs, reference, 3).tolist() == [1, 2, 4]


def _conv_model(hw: tuple[int, int], kernel: tuple[int, int], pads: list[int], strides: list[int], seed: int = 0):
    """x [1, 3, H, W] -> Conv (random weights and bias) -> Relu, shape-inferred."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 1, (5, 3, *kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 1, 5).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=list(kernel), pads=pads,
                              strides=strides),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("hw, kernel, pads, strides, cropped_kernel", [
    ((1, 1), (3, 3), [1, 1, 1, 1], [1, 1], [1, 1]),  # a 1x1 map: only the centre tap reads an input
    ((1, 1), (1, 3), [0, 1, 0, 1], [1, 1], [1, 1]),
    ((1, 4), (3, 3), [1, 1, 1, 1], [1, 1], [1, 3]),  # rows cropped, columns all used
    ((2, 2), (3, 3), [1, 1, 1, 1], [2, 2], [2, 2]),  # stride 2 over 2x2: the last row/column reads padding only
    ((4, 4), (1, 7), [0, 3, 0, 3], [1, 1], None),  # every tap reads an input somewhere: unchanged
    ((5, 5), (3, 3), [0, 0, 0, 0], [1, 1], None),
])
def test_crop_padding_taps_keeps_outputs(hw, kernel, pads, strides, cropped_kernel):
    """Kernels shrink to the taps that ever read a real input; the outputs stay the same (up to float32
    summation order), and kernels whose every tap is used stay as they are."""
    from onnx import helper

    from tumor_edge.export.quantize.graph import crop_padding_taps
    from tumor_edge.export.quantize.scoring import session

    model = _conv_model(hw, kernel, pads, strides)
    x = np.random.default_rng(1).normal(0, 1, (1, 3, *hw)).astype(np.float32)
    before = session(model).run(None, {"x": x})[0]
    changed = crop_padding_taps(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    shape = list(helper.get_attribute_value(next(a for a in conv.attribute if a.name == "kernel_shape")))
    if cropped_kernel is None:
        assert changed == [] and shape == list(kernel)
    else:
        assert changed == ["conv"] and shape == cropped_kernel
        assert list(next(i for i in model.graph.initializer if i.name == "w").dims[2:]) == cropped_kernel
    after = session(model).run(None, {"x": x})[0]
    assert after.shape == before.shape
    # float32 sums of 3 x 9 products of N(0, 1) values: a few ulps of the largest partial sum
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * max(1.0, np.abs(before).max()))


def test_crop_padding_taps_in_a_qdq_model_gives_the_same_int8_outputs(tmp_path):
    """On a QDQ model (weight = DequantizeLinear of int8), cropping leaves every output bit the same: padding
    is the zero point, whose products are 0 in any order."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    from tumor_edge.export.quantize import QuantizationConfig, quantize_with_ranges
    from tumor_edge.export.quantize.graph import crop_padding_taps
    from tumor_edge.export.quantize.scoring import session

    model = _conv_model((1, 1), (3, 3), [1, 1, 1, 1], [1, 1])
    onnx.save(model, str(tmp_path / "f.onnx"))
    ranges = TensorsData(CalibrationMethod.MinMax, {n: (np.float32(-4), np.float32(4)) for n in ("x", "c", "y")})
    q = quantize_with_ranges(tmp_path / "f.onnx", tmp_path / "q.onnx", "minmax", ranges,
                             QuantizationConfig(methods=("minmax",)), [], tmp_path)
    qdq = onnx.shape_inference.infer_shapes(onnx.load(str(q)))
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 1, 1)).astype(np.float32)
    before = session(qdq).run(None, {"x": x})[0]
    assert crop_padding_taps(qdq) == ["conv"]
    np.testing.assert_array_equal(session(qdq).run(None, {"x": x})[0], before)
    assert TensorProto.INT8 in {i.data_type for i in qdq.graph.initializer}  # the weight really was int8


def test_drop_identity_reshapes_removes_only_reshapes_that_change_nothing():
    """Reshape [N, C, 1, 1] -> [-1, C, 1, 1] goes; one that moves dimensions or writes a graph output stays."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tumor_edge.export.quantize.graph import drop_identity_reshapes
    from tumor_edge.export.quantize.scoring import session

    same = numpy_helper.from_array(np.array([-1, 6, 1, 1], np.int64), "same")
    moved = numpy_helper.from_array(np.array([-1, 1, 1, 6], np.int64), "moved")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "same"], ["r2"], name="identity"),
             helper.make_node("Relu", ["r2"], ["r3"], name="relu2"),
             helper.make_node("Reshape", ["r3", "moved"], ["y"], name="moves"),
             helper.make_node("Reshape", ["r3", "same"], ["z"], name="writes_output")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [same, moved])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.random.default_rng(3).normal(0, 1, (2, 6, 1, 1)).astype(np.float32)
    before = session(model).run(None, {"x": x})
    assert drop_identity_reshapes(model) == ["identity"]
    assert [n.name for n in model.graph.node] == ["relu", "relu2", "moves", "writes_output"]
    for got, want in zip(session(model).run(None, {"x": x}), before):
        np.testing.assert_array_equal(got, want)
