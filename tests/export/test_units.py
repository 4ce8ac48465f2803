"""Fast checks of export's building blocks (no conversion): sample selection, the entropy threshold port, the
output folder rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tumor_edge.data.dataset import Sample
from tumor_edge.errors import OutputExistsError
from tumor_edge.export.exporter import prepare_out_dir
from tumor_edge.export.samples import stratified_subset


def test_stratified_subset_keeps_class_proportions_and_is_deterministic():
    samples = [Sample(Path(f"c{label}/{i}.jpg"), label) for label, n in ((0, 60), (1, 30), (2, 10))
               for i in range(n)]
    subset = stratified_subset(samples, 20, seed=1)
    assert len(subset) == 20 and len({s.path for s in subset}) == 20
    assert Counter(s.label for s in subset) == {0: 12, 1: 6, 2: 2}
    assert subset == stratified_subset(list(reversed(samples)), 20, seed=1)
    assert stratified_subset(samples, None, seed=1) == samples
    assert len(stratified_subset(samples, 500, seed=1)) == 100


@pytest.mark.parametrize("bins", [256, 400])
def test_entropy_threshold_matches_onnxruntime(bins):
    """The vectorised KL search must give onnxruntime's thresholds exactly."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from tumor_edge.export.quantize import entropy_threshold

    rng = np.random.default_rng(bins)
    for _ in range(3):
        x = np.concatenate([np.maximum(rng.normal(0.5, 1.5, 50_000), 0), rng.standard_cauchy(500) * 0.3])
        x = x.astype(np.float32)
        t = np.float32(np.abs(x).max())
        hist, edges = np.histogram(x, bins, range=(-t, t))
        histogram = (hist, edges.astype(np.float32), x.min(), x.max(), t)
        expected = HistogramCollector("entropy", False, bins, 128, 99.999, "same").get_entropy_threshold(
            histogram, 128)
        got = entropy_threshold(histogram, 128)
        assert float(got[0]) == float(expected[0]) and float(got[1]) == float(expected[1])


def test_out_dir_needs_force_and_force_spares_foreign_files(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model_fp32.onnx").write_bytes(b"old")
    (out / "metadata.json").write_text("{}")
    (out / "model_int8.ort.onnx").write_bytes(b"a file export does not write")
    with pytest.raises(OutputExistsError, match="--force"):
        prepare_out_dir(out, force=False)
    prepare_out_dir(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["model_int8.ort.onnx", "notes.txt"]
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        prepare_out_dir(file_path, force=True)


def test_force_clears_the_files_of_a_format_row_added_later(tmp_path, monkeypatch):
    """The files --force clears are the format table's at call time, not at import."""
    from tumor_edge.contracts import formats

    row = formats.ModelFormat("onnx-late", "onnx", "fp32", "model_late.onnx", "onnxruntime")
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, row))
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model_late.onnx").write_bytes(b"old")
    prepare_out_dir(out, force=True)
    assert not (out / "model_late.onnx").exists()


def test_float_average_pools_rewrite_keeps_outputs():
    """count_include_pad=0 pools become count_include_pad=1 pools times a border correction: same numbers."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tumor_edge.export.quantize import float_average_pools

    pool = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[1, 1],
                            pads=[1, 1, 1, 1], count_include_pad=0)
    graph = helper.make_graph([pool], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    x = np.random.default_rng(0).normal(size=(1, 2, 7, 5)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    kept = float_average_pools(model)
    assert kept == ["pool", "pool__pad_correct"]
    assert [n.op_type for n in model.graph.node] == ["AveragePool", "Mul"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_collecting_optimizers_are_tf2onnx_own_in_the_same_order():
    """The memory fix for tf2onnx (a garbage collection before each optimizer pass) must not change the passes."""
    pytest.importorskip("tf2onnx")
    from tf2onnx.optimizer import _get_optimizers

    from tumor_edge.export.formats.onnx import collecting_optimizers

    ours, theirs = collecting_optimizers(), _get_optimizers()
    assert list(ours) == list(theirs)
    for name in theirs:
        assert type(ours[name]()) is type(theirs[name]()), name
