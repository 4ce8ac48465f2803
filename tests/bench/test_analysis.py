"""Derived figures: ratios, achieved rates against the ceiling of each file's own arithmetic, the int8
head-to-head table and the goals (with what fraction of its ceiling meeting each would take)."""

from __future__ import annotations

import pytest

from tumor_edge.bench.analysis import GOALS, add_rates, add_ratios, check_goals, head_to_head


def test_ratios_rates_and_goals(make_row):
    rows = [make_row("keras", 2, 1, 100.0), make_row("onnx-fp32", 2, 1, 40.0), make_row("onnx-int8", 2, 1, 30.0),
            make_row("tflite-fp32", 2, 1, 60.0), make_row("onnx-fp32", 1, 8, 400.0)]
    add_ratios(rows)
    add_rates(rows, 2_000_000_000, {"fp32": {2: 100.0}})
    by = {(r["format"], r["threads"], r["batch"]): r for r in rows}
    assert by[("onnx-fp32", 2, 1)]["vs_keras"] == pytest.approx(0.4)
    assert by[("onnx-int8", 2, 1)]["vs_onnx_fp32"] == pytest.approx(0.75)
    assert by[("onnx-fp32", 1, 8)]["vs_keras"] is None  # no Keras figure at 1 thread, batch 8
    assert by[("onnx-fp32", 2, 1)]["gmacs"] == pytest.approx(2.0 / 0.040)
    assert by[("onnx-fp32", 2, 1)]["ceiling_fraction"] == pytest.approx(0.5)
    assert by[("onnx-fp32", 1, 8)]["gmacs"] == pytest.approx(2.0 * 8 / 0.4)
    assert by[("onnx-fp32", 1, 8)]["ceiling_fraction"] is None  # no ceiling measured at 1 thread
    goals = {g["name"]: g for g in check_goals(rows, threads=2)}
    assert goals["ONNX fp32 vs Keras (tf.function)"]["passed"]  # 0.40 <= 0.45
    assert goals["ONNX fp32 vs LiteRT fp32"]["ratio"] == pytest.approx(40 / 60)
    assert goals["ONNX int8 vs ONNX fp32"]["passed"]
    rows[1]["p50_ms"] = 50.0
    assert not {g["name"]: g for g in check_goals(rows, 2)}["ONNX fp32 vs Keras (tf.function)"]["passed"]
    # Feasibility: 0.45x of Keras's 100 ms is 45 ms; 2 GMAC in 45 ms is 44.4 GMAC/s.
    rows[1]["precision"] = "fp32"
    goal = {g["name"]: g for g in check_goals(rows, 2, 1, 2_000_000_000, {"fp32": 40.0})}[
        "ONNX fp32 vs Keras (tf.function)"]
    assert goal["required_ceiling_fraction"] == pytest.approx(2.0 / 0.045 / 40.0)
    assert goal["ceiling_precision"] == "fp32" and goal["reachable"] is False
    goal = {g["name"]: g for g in check_goals(rows, 2, 1, 2_000_000_000, {"fp32": 50.0})}[
        "ONNX fp32 vs Keras (tf.function)"]
    assert goal["reachable"] is True


def test_each_precision_is_set_against_its_own_ceiling(make_row):
    rows = [make_row("onnx-fp32", 2, 1, 40.0, "fp32"), make_row("onnx-fp16", 2, 1, 40.0, "fp16"),
            make_row("onnx-int8", 2, 1, 20.0, "int8"), make_row("tflite-int8", 2, 1, 25.0, "int8"),
            make_row("onnx-int8", 1, 1, 40.0, "int8")]
    add_rates(rows, 2_000_000_000, {"fp32": {1: 25.0, 2: 50.0}, "int8": {2: 400.0}})
    by = {(r["format"], r["threads"]): r for r in rows}
    # fp32 and fp16 files: the float32 ceiling (50 GMAC/s at 2 threads); 2 GMAC in 40 ms = 50 GMAC/s.
    for key in (("onnx-fp32", 2), ("onnx-fp16", 2)):
        assert by[key]["ceiling_precision"] == "fp32" and by[key]["ceiling_fraction"] == pytest.approx(1.0)
    # int8 files: the int8 ceiling; 2 GMAC in 20 ms = 100 GMAC/s = a quarter of 400.
    assert by[("onnx-int8", 2)]["ceiling_precision"] == "int8"
    assert by[("onnx-int8", 2)]["gmacs"] == pytest.approx(100.0)
    assert by[("onnx-int8", 2)]["ceiling_fraction"] == pytest.approx(0.25)
    assert by[("tflite-int8", 2)]["ceiling_fraction"] == pytest.approx(80.0 / 400.0)
    # No int8 ceiling at 1 thread: no fraction, never a fraction of the float32 one instead.
    assert by[("onnx-int8", 1)]["ceiling_fraction"] is None
    # Consistency: fraction x ceiling gives back the achieved rate, for every row that has one.
    ceilings = {"fp32": {1: 25.0, 2: 50.0}, "int8": {2: 400.0}}
    for r in rows:
        if r["ceiling_fraction"] is not None:
            assert r["ceiling_fraction"] * ceilings[r["ceiling_precision"]][r["threads"]] == pytest.approx(r["gmacs"])
    # Without a MAC count there are no rates at all.
    add_rates(rows, None, ceilings)
    assert all(r["gmacs"] is None and r["ceiling_fraction"] is None for r in rows)


def test_int8_head_to_head_and_its_goal(make_row):
    rows = [make_row("onnx-int8", t, b, p, "int8") for t, b, p in ((1, 1, 50.0), (2, 1, 26.0), (2, 8, 240.0))]
    rows += [make_row("tflite-int8", t, b, p, "int8") for t, b, p in ((1, 1, 40.0), (2, 1, 26.0), (1, 8, 300.0))]
    rows.append(make_row("onnx-fp32", 2, 1, 52.0, "fp32"))
    add_rates(rows, 1_000_000_000, {"int8": {1: 100.0, 2: 200.0}})
    table = head_to_head(rows, "onnx-int8", "tflite-int8")
    assert [(r["threads"], r["batch"]) for r in table] == [(1, 1), (2, 1)]  # only where both ran
    first = table[0]
    assert first["ratio"] == pytest.approx(50.0 / 40.0)
    assert first["left_ceiling_fraction"] == pytest.approx(1.0 / 0.050 / 100.0)
    assert first["right_ceiling_fraction"] == pytest.approx(1.0 / 0.040 / 100.0)
    # The ratio of two int8 rows is the inverse ratio of their fractions of the same ceiling.
    for r in table:
        assert r["ratio"] == pytest.approx(r["right_ceiling_fraction"] / r["left_ceiling_fraction"])
    goals = {g["name"]: g for g in check_goals(rows, 2, 1, 1_000_000_000, {"int8": 200.0})}
    goal = goals["ONNX int8 vs LiteRT int8"]
    assert goal["passed"] and goal["ratio"] == pytest.approx(1.0)  # a tie meets "at least as fast"
    # Meeting it needs 1 GMAC in 26 ms (38.5 GMAC/s): 19 % of the int8 ceiling, reachable.
    assert goal["ceiling_precision"] == "int8"
    assert goal["required_ceiling_fraction"] == pytest.approx(1.0 / 0.026 / 200.0)
    assert goal["reachable"] is True
    assert {g.name for g in GOALS} >= {"ONNX int8 vs LiteRT int8", "ONNX int8 vs ONNX fp32"}
