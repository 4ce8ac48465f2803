"""The matmul ceilings: the int8 one is onnxruntime's real integer matmul (checked against numpy), each kind is
merged and looked up by precision, and older records read as the float32 ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.bench.ceiling import (
    PRECISIONS,
    Ceiling,
    ceiling_precision,
    ceiling_table,
    int8_matmul_model,
    measure_ceilings,
    merge_ceilings,
)


def test_int8_ceiling_model_is_onnxruntimes_integer_matmul():
    """What is timed computes uint8 x int8 -> int32 exactly as numpy does: no shortcut, no float path."""
    import onnx
    import onnxruntime as ort

    raw = int8_matmul_model(64)
    model = onnx.load_from_string(raw)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger"]
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    b = rng.integers(-128, 128, (64, 64), dtype=np.int8)
    (y,) = session.run(None, {"a": a, "b": b})
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, a.astype(np.int32) @ b.astype(np.int32))


def test_measure_ceilings_gives_both_kinds_in_one_child_process():
    run = measure_ceilings(1, size=128, min_seconds=0.0)
    assert run.unavailable == {}
    kinds = {c.precision: c for c in run.ceilings}
    assert set(kinds) == set(PRECISIONS) == {"fp32", "int8"}
    for c in kinds.values():
        assert c.threads == 1 and c.size == 128 and c.runs >= 5
        assert 0 < c.median_gmacs <= c.best_gmacs
    assert "MatMulInteger" in kinds["int8"].engine and "float32" in kinds["fp32"].engine


def test_merge_keeps_the_best_per_precision_and_threads():
    passes = [Ceiling(2, 256, 5, 40.0, 50.0, "fp32"), Ceiling(2, 256, 5, 150.0, 180.0, "int8", "ort"),
              Ceiling(2, 256, 6, 45.0, 48.0, "fp32"), Ceiling(2, 256, 5, 140.0, 200.0, "int8", "ort"),
              Ceiling(1, 256, 5, 25.0, 30.0, "fp32")]
    merged = merge_ceilings(passes)
    assert [(c.precision, c.threads) for c in merged] == [("fp32", 1), ("fp32", 2), ("int8", 2)]
    by = {(c.precision, c.threads): c for c in merged}
    assert by[("fp32", 2)].best_gmacs == 50.0 and by[("fp32", 2)].median_gmacs == 45.0
    assert by[("fp32", 2)].runs == 11
    assert by[("int8", 2)].best_gmacs == 200.0 and by[("int8", 2)].engine == "ort"
    assert ceiling_table(merged) == {"fp32": {1: 30.0, 2: 50.0}, "int8": {2: 200.0}}
    assert ceiling_table([c.to_dict() for c in merged]) == ceiling_table(merged)


def test_records_from_before_the_int8_ceiling_read_as_float32():
    old = {"threads": 2, "size": 2048, "runs": 12, "median_gmacs": 120.0, "best_gmacs": 128.6}
    c = Ceiling.from_dict(old)
    assert c.precision == "fp32" and c.best_gmacs == 128.6
    assert ceiling_table([old]) == {"fp32": {2: 128.6}}


@pytest.mark.parametrize("precision, ceiling", [("fp32", "fp32"), ("fp16", "fp32"), ("int8", "int8")])
def test_files_are_set_against_the_ceiling_of_their_arithmetic(precision, ceiling):
    assert ceiling_precision(precision) == ceiling
