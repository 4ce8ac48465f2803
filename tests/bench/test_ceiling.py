"""The matmul ceilings: the int8 one is onnxruntime's real integer matmul (checked against numpy), each kind is
merged and looked up by precision, and older records read as the float32 ceiling."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from tumor_edge.bench.ceiling import (
    PRECISIONS,
    Ceiling,
    ceiling_precision,
    ceiling_table,
    matmul_model,
    measure_ceilings,
    merge_ceilings,
)


def saturating_pair_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b as x86 without VNNI computes uint8 x int8 (vpmaddubsw): each pair of neighbouring products along k,
    a[i, 2m] b[2m, j] + a[i, 2m+1] b[2m+1, j], is clipped to int16 before the int32 accumulation."""
    products = a.astype(np.int32)[:, :, None] * b.astype(np.int32)[None, :, :]  # [i, k, j]
    pairs = products[:, 0::2, :] + products[:, 1::2, :]
    return np.clip(pairs, -32768, 32767).sum(axis=1, dtype=np.int32)


def test_full_range_int8_operands_saturate_without_vnni():
    """Why the operands are limited: full-range uint8 x int8 pairs reach 2 * 255 * -128 = -65280, far outside
    int16, so a CPU without VNNI returns clipped sums where numpy's exact product differs."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    b = rng.integers(-128, 128, (64, 64), dtype=np.int8)
    exact = a.astype(np.int32) @ b.astype(np.int32)
    assert np.count_nonzero(saturating_pair_matmul(a, b) != exact) > 64 * 64 // 4


def test_int8_operands_cannot_saturate_on_any_cpu():
    """The ceiling's operands: |a0*b0 + a1*b1| <= 2 * 255 * 64 = 32640 <= 32767, so vpmaddubsw's int16 pair sums
    never clip; VNNI (int32 sums of four) and ARM64 (sdot or widening multiplies) are exact. Checked on the
    extreme values of each range and on random operands."""
    from tumor_edge.bench.ceiling import INT8_A_RANGE, INT8_B_RANGE, int8_operands

    assert max(abs(a * b) for a in INT8_A_RANGE for b in INT8_B_RANGE) * 2 <= 32767
    a, b = int8_operands(np.random.default_rng(1), 64)
    assert (a.min(), a.max(), b.min(), b.max()) == (*INT8_A_RANGE, *INT8_B_RANGE)
    extreme_a = np.full((4, 64), INT8_A_RANGE[1], np.uint8)
    extreme_b = np.stack([np.full(64, v, np.int8) for v in INT8_B_RANGE], axis=1)
    for x, y in ((a, b), (extreme_a, extreme_b)):
        np.testing.assert_array_equal(saturating_pair_matmul(x, y), x.astype(np.int32) @ y.astype(np.int32))


def test_int8_ceiling_model_is_onnxruntimes_integer_matmul():
    """What is timed computes uint8 x int8 -> int32 exactly as numpy does: no shortcut, no float path. Exact on
    every CPU because the operands cannot saturate a pair sum (see the test above)."""
    import onnx
    import onnxruntime as ort

    from tumor_edge.bench.ceiling import int8_operands

    raw = matmul_model("int8", 64)
    model = onnx.load_from_string(raw)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger"]
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    a, b = int8_operands(np.random.default_rng(1), 64)
    (y,) = session.run(None, {"a": a, "b": b})
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, a.astype(np.int32) @ b.astype(np.int32))


def test_measure_ceilings_gives_both_kinds_in_one_child_process():
    ceilings, unavailable = measure_ceilings(1, size=128, min_seconds=0.0)
    assert unavailable == {}
    kinds = {c.precision: c for c in ceilings}
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
    assert ceiling_table([asdict(c) for c in merged]) == ceiling_table(merged)


def test_records_from_before_the_int8_ceiling_read_as_float32():
    old = {"threads": 2, "size": 2048, "runs": 12, "median_gmacs": 120.0, "best_gmacs": 128.6}
    c = Ceiling.from_dict(old)
    assert c.precision == "fp32" and c.best_gmacs == 128.6
    assert ceiling_table([old]) == {"fp32": {2: 128.6}}


@pytest.mark.parametrize("precision, ceiling", [("fp32", "fp32"), ("fp16", "fp32"), ("int8", "int8")])
def test_files_are_set_against_the_ceiling_of_their_arithmetic(precision, ceiling):
    assert ceiling_precision(precision) == ceiling


def test_float32_ceiling_model_is_onnxruntimes_own_matmul():
    """The float32 ceiling runs through onnxruntime (MLAS), not numpy's BLAS: one MatMul node, numpy's result."""
    import onnx
    import onnxruntime as ort

    from tumor_edge.bench.ceiling import KINDS

    raw = matmul_model("fp32", 48)
    model = onnx.load_from_string(raw)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((48, 48), dtype=np.float32) for _ in range(2))
    (y,) = session.run(None, {"a": a, "b": b})
    # 48 products of N(0,1) values summed in float32, in whatever order each side uses
    np.testing.assert_allclose(y, a.astype(np.float64) @ b.astype(np.float64), rtol=0, atol=48 * 4 * 2 ** -23 * 8)
    assert KINDS["fp32"][0] == "onnxruntime MatMul float32"


def test_old_float32_records_keep_their_blas_engine_name():
    from tumor_edge.bench.ceiling import LEGACY_FP32_ENGINE

    assert Ceiling.from_dict({"threads": 1, "size": 1024, "runs": 5, "median_gmacs": 50.0,
                              "best_gmacs": 54.0}).engine == LEGACY_FP32_ENGINE


ZEN5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC
cpu MHz\t\t: 2596.122
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""


def test_isa_peak_is_units_times_lanes_times_clock(tmp_path):
    """AVX-512: 2 units x 16 fp32 lanes = 32 MACs a cycle, 2 x 64 = 128 int8 products; at the highest reported
    clock (2.6 GHz): 83.2 / 332.8 GMAC/s a core, twice that on two."""
    from tumor_edge.bench.ceiling import isa_peak, read_clock_ghz

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN5_CPUINFO)
    peak = isa_peak(cpuinfo, machine="x86_64")
    if peak.clock_source.startswith("cpufreq"):  # this machine exposes cpufreq: the test's text cannot win
        peak = isa_peak(cpuinfo, machine="x86_64", clock_ghz=2.6)
    assert (peak.isa, peak.vector_bits, peak.fma_units) == ("avx512f", 512, 2)
    assert peak.macs_per_cycle("fp32") == 32 and peak.macs_per_cycle("fp16") == 32
    assert peak.macs_per_cycle("int8") == 128
    assert peak.clock_ghz == pytest.approx(2.6)
    assert peak.gmacs("fp32", 1) == pytest.approx(83.2) and peak.gmacs("int8", 2) == pytest.approx(665.6)
    assert "2 x 512-bit" in peak.assumptions
    # cpufreq's maximum wins over /proc/cpuinfo's (often the base clock in a VM)
    freq = tmp_path / "max"
    freq.write_text("3700000\n")
    assert read_clock_ghz(2596.1, str(freq)) == (3.7, "cpufreq cpuinfo_max_freq")
    assert read_clock_ghz(2596.1, str(tmp_path / "absent"))[0] == pytest.approx(2.5961)
    assert read_clock_ghz(None, str(tmp_path / "absent")) == (None, "unknown")


@pytest.mark.parametrize("flags, vendor, family, machine, expect", [
    ({"avx2", "fma"}, "GenuineIntel", 6, "x86_64", ("avx2+fma", 256, 2)),
    ({"avx512f", "avx2", "fma"}, "AuthenticAMD", 0x19, "x86_64", ("avx512f", 256, 2)),  # Zen 4: 2 x 256-bit
    ({"sse2"}, "GenuineIntel", 6, "x86_64", ("sse", 128, 2)),
    ({"asimd", "asimddp"}, "", None, "aarch64", ("asimd", 128, 4)),
])
def test_vector_datapath_per_isa(flags, vendor, family, machine, expect):
    from tumor_edge.bench.ceiling import vector_datapath

    assert vector_datapath(flags, vendor, family, machine)[:3] == expect


def test_isa_peak_without_a_clock_is_none(tmp_path):
    from tumor_edge.bench.ceiling import isa_peak

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags : avx2 fma\n")
    peak = isa_peak(cpuinfo, machine="x86_64")
    assert peak is None or peak.clock_source.startswith("cpufreq")  # a machine with cpufreq still has a clock


def test_rows_above_their_own_ceiling_are_flagged_as_measurement_errors():
    """ONNX fp32 at 89.5 GMAC/s against a 54 GMAC/s BLAS "ceiling" (166 %) is an error; 100 %
    and up to the tolerance are not; a row without a ceiling is never flagged; rerunning clears old flags."""
    from tumor_edge.bench.ceiling import OVER_CEILING_TOLERANCE, flag_over_ceiling

    rows = [{"format": "onnx-fp32", "ceiling_fraction": 89.5 / 54.0, "ceiling_precision": "fp32"},
            {"format": "onnx-int8", "ceiling_fraction": 1.0, "ceiling_precision": "int8"},
            {"format": "tflite-int8", "ceiling_fraction": 1.0 + OVER_CEILING_TOLERANCE, "ceiling_precision": "int8"},
            {"format": "keras", "ceiling_fraction": None},
            {"format": "onnx-fp16", "ceiling_fraction": 0.5, "measurement_error": "stale"}]
    flagged = flag_over_ceiling(rows)
    assert [r["format"] for r in flagged] == ["onnx-fp32"]
    assert rows[0]["measurement_error"].startswith("166% of its fp32 ceiling")
    assert all("measurement_error" not in r for r in rows[1:])


def test_add_rates_flags_a_row_above_its_ceiling():
    from tumor_edge.bench.analysis import add_rates

    # 5.71 GMAC in 60 ms at 1 thread: 95.2 GMAC/s against a 54 GMAC/s fp32 ceiling
    rows = [{"format": "onnx-fp32", "precision": "fp32", "threads": 1, "batch": 1, "p50_ms": 60.0},
            {"format": "onnx-int8", "precision": "int8", "threads": 1, "batch": 1, "p50_ms": 60.0}]
    add_rates(rows, 5_710_000_000, {"fp32": {1: 54.0}, "int8": {1: 300.0}})
    assert "measurement_error" in rows[0] and "measurement_error" not in rows[1]


def test_ceilings_above_the_isa_peak_name_the_clock_they_imply():
    """A measured ceiling above units x lanes x clock means the cores run faster than the clock assumed: the
    line says how fast at least (330 GMAC/s / 128 MACs a cycle = 2.58 GHz is within a 2.6 GHz peak; 400 is not:
    >= 3.13 GHz)."""
    from tumor_edge.bench.ceiling import IsaPeak, peak_problems

    peak = IsaPeak("avx512f", 512, 2, 2.6, "test")
    ok = Ceiling(1, 1024, 5, 300.0, 330.0, "int8", "ort")
    over = Ceiling(1, 1024, 5, 350.0, 400.0, "int8", "ort")
    over_fp32 = Ceiling(2, 1024, 5, 150.0, 180.0, "fp32", "ort")  # peak 2 x 32 x 2.6 = 166.4
    assert peak_problems([ok], peak) == []
    problems = peak_problems([ok, over, over_fp32], peak)
    assert len(problems) == 2
    assert ">= 3.12 GHz" in problems[0] or ">= 3.13 GHz" in problems[0]
    assert "fp32 ceiling at 2 thread(s)" in problems[1] and ">= 2.81 GHz" in problems[1]
    assert peak_problems([over], None) == []
