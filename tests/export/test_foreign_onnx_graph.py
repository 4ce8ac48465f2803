"""The foreign-ONNX graph rewrite and its output-only OOD score, on onnx-helper-built models (no PyTorch needed):
the NHWC wrapper, the appended softmax, the in-graph score against its numpy twin in both opset forms, the batch
proof, and the runtime's reading of the score. Each model is a few nodes; the whole file runs in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tumor_edge.calibration.mahalanobis import OUTPUT_SCORES, fit_output_threshold, output_score
from tumor_edge.errors import ConfigError, ModelError
from tumor_edge.export.foreign_onnx import OnnxModel, inspect_onnx, to_bundle_model
from tumor_edge.runtime.postprocess import PostProcessing, ood_scores, warnings_for

RNG = np.random.default_rng(0)
W = RNG.normal(0, 1, (3, 4)).astype(np.float32)  # pooled RGB -> 4 classes


def _model(path: Path, opset: int = 17, layout: str = "nchw", softmax: bool = False, hard_batch: bool = False,
           size: int = 8) -> Path:
    """GlobalAveragePool -> Flatten (or Reshape to [1, -1]) -> MatMul: logits (or probabilities), NCHW/NHWC."""
    nodes, inits = [], [numpy_helper.from_array(W, "w")]
    x = "x"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    if hard_batch:
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["pooled", "shape"], ["flat"]))
    else:
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    nodes.append(helper.make_node("MatMul", ["flat", "w"], ["z"]))
    out = "z"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1))
        out = "p"
    shape = [1, 3, size, size] if layout == "nchw" else [1, size, size, 3]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _run(path: Path, nhwc: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: nhwc})


@pytest.mark.parametrize("opset", [17, 18])  # the reduce ops take their axes as an attribute, then as an input
def test_nchw_logits_become_nhwc_probabilities_with_an_energy_output(tmp_path, opset):
    src = _model(tmp_path / "m.onnx", opset)
    facts = inspect_onnx(src, 4, None)
    assert (facts.layout, facts.batch, facts.opset, facts.height) == ("nchw", 1, opset, 8)
    made = to_bundle_model(src, tmp_path / "out.onnx", facts, append_softmax=True, ood_score="logit_energy")
    assert made["batch"].startswith("dynamic") and made["opset"] == opset and made["input_transposed"]
    wrapped = onnx.load(str(tmp_path / "out.onnx"))
    assert wrapped.opset_import[0].version == opset  # the model's own opset, kept
    nhwc = RNG.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    probs, score = _run(tmp_path / "out.onnx", nhwc)  # a batch of 5 through a file that declared 1
    logits = OnnxModel(src, facts).predict(nhwc)
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(score, output_score(logits, "logit_energy"), atol=1e-5)


def test_nhwc_probabilities_get_a_max_probability_score_and_no_second_softmax(tmp_path):
    src = _model(tmp_path / "m.onnx", 18, layout="nhwc", softmax=True)
    facts = inspect_onnx(src, 4, 8)
    assert facts.layout == "nhwc"
    made = to_bundle_model(src, tmp_path / "out.onnx", facts, append_softmax=False, ood_score="max_probability")
    assert not made["input_transposed"] and not made["softmax_appended"]
    nhwc = RNG.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    probs, score = _run(tmp_path / "out.onnx", nhwc)
    np.testing.assert_allclose(probs, OnnxModel(src, facts).predict(nhwc), atol=1e-6)
    np.testing.assert_allclose(score, -probs.max(1), atol=1e-6)


def test_a_graph_that_bakes_in_its_batch_keeps_it(tmp_path):
    """Reshape to [1, -1] cannot run two images: the batch stays fixed and metadata says why."""
    src = _model(tmp_path / "m.onnx", hard_batch=True)
    made = to_bundle_model(src, tmp_path / "out.onnx", inspect_onnx(src, 4, None), append_softmax=True)
    assert made["batch"].startswith("fixed 1") and "batch of 2" in made["batch"]
    dims = onnx.load(str(tmp_path / "out.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 8, 8, 3]


def test_the_runtime_feeds_a_fixed_batch_file_in_its_own_batch_size(tmp_path):
    from tumor_edge.runtime.backends import BackendOptions, open_backend

    src = _model(tmp_path / "m.onnx", hard_batch=True)
    to_bundle_model(src, tmp_path / "out.onnx", inspect_onnx(src, 4, None), append_softmax=True)
    backend = open_backend(tmp_path / "out.onnx", BackendOptions())
    assert backend.fixed_batch == 1
    nhwc = RNG.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    together = backend.run(nhwc)[0]
    np.testing.assert_allclose(together, np.concatenate([backend.run(nhwc[i:i + 1])[0] for i in range(3)]))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.graph.input[0].type.tensor_type.__setattr__("elem_type", TensorProto.DOUBLE), "not float32"),
    (lambda m: m.graph.input[0].type.tensor_type.shape.dim.pop(), "4-D image input"),
    (lambda m: m.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])),
     "2 outputs"),
    (lambda m: m.graph.input[0].type.tensor_type.shape.dim[1].__setattr__("dim_value", 1), "layout"),
])
def test_models_export_cannot_take_are_one_line_errors(tmp_path, change, message):
    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    change(model)
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match=message) as err:
        inspect_onnx(tmp_path / "bad.onnx", 4, None)
    assert "\n" not in str(err.value)


def test_image_size_and_class_count_are_checked(tmp_path):
    src = _model(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="8x8 images but the image size given is 9"):
        inspect_onnx(src, 4, 9)
    with pytest.raises(ModelError, match="4 outputs but 3 classes"):
        inspect_onnx(src, 3, None)
    with pytest.raises(ModelError, match="8-channel input"):  # a stated layout wins: read as NHWC, 8 channels
        inspect_onnx(src, 4, None, layout="nhwc")


def test_output_scores_threshold_and_runtime_reading():
    logits = np.array([[8.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.1]])
    energy = output_score(logits, "logit_energy")
    assert energy[0] < energy[1]  # the confident row is the familiar one
    np.testing.assert_allclose(energy, -np.log(np.exp(logits).sum(1)))
    with pytest.raises(ConfigError):
        output_score(logits, "energy")
    values = np.linspace(-10, -1, 100)
    record = fit_output_threshold(values, "logit_energy", 0.95)
    assert record["measured_tpr"] == pytest.approx(0.95, abs=0.011) and record["output_role"] == "ood_score"
    settings = PostProcessing.from_fields(None, record)
    assert settings.has_ood and settings.ood_score == "logit_energy"
    scores = ood_scores({"ood_score": np.array([-5.0, 0.0], np.float32)}, settings)
    np.testing.assert_allclose(scores, [-5.0, 0.0])
    grey = np.full((8, 8, 3), 0, np.uint8)
    grey[2:6, 2:6] = 120
    assert any("logit energy" in w for w in warnings_for(grey, 0.0, PostProcessing.from_fields(None, record)))
    for kind in OUTPUT_SCORES:
        with pytest.raises(ConfigError, match="ood.threshold"):
            PostProcessing.from_fields(None, {**record, "score": kind, "threshold": "high"})


def test_a_nearly_constant_tensor_does_not_break_int8_calibration(tmp_path):
    """Found exporting a PyTorch CNN (BatchNorm, 240 px): a tensor whose float32 values span a few ulps made
    numpy's 2048-bin histogram fail ("Too many bins for data range") and the int8 row with it."""
    from tumor_edge.export.quantize import QuantizationConfig, collect_ranges
    from tumor_edge.runtime.preprocess import Preprocessing

    scale = numpy_helper.from_array(np.array(1e-9, np.float32), "tiny")
    offset = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "tiny"], ["small"]), helper.make_node("Add", ["small", "three"], ["near"]),
         helper.make_node("Relu", ["near"], ["y"])], "near_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 3])], [scale, offset])
    path = tmp_path / "near.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    pixels = RNG.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    config = QuantizationConfig(methods=("minmax", "entropy", "percentile"))
    ranges = collect_ranges(path, pixels, Preprocessing(8, 8, scaling="none"), config, tmp_path, show_progress=False)
    assert set(ranges) == {"minmax", "entropy", "percentile"}


def test_a_dynamic_output_width_is_checked_on_real_outputs(tmp_path):
    from tumor_edge.export.config import ExportConfig
    from tumor_edge.export.source import load_source

    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    model.graph.output[0].type.tensor_type.shape.dim[1].Clear()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(model, tmp_path / "dynamic_width.onnx")
    with pytest.raises(ModelError, match="3 classes were given") as err:
        load_source(ExportConfig(tmp_path / "dynamic_width.onnx", tmp_path / "out", classes=["a", "b", "c"],
                                 preprocess="unit"))
    assert err.value.option == "classes"
    source = load_source(ExportConfig(tmp_path / "dynamic_width.onnx", tmp_path / "out", classes=list("abcd"),
                                      preprocess="unit"))
    assert source.kind == "onnx" and source.source_output == "logits" and source.trust.ood is None
    assert any("only the input checks apply" in w for w in source.warnings)  # no held-back images: said, not faked
