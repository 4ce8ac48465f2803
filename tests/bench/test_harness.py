"""The harness on the session's exported bundle (a tiny trained InceptionV3, every format): every format,
thread count and batch timed; recorded statistics and derived figures consistent with the recorded timings and
ceilings; the machine described."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tumor_edge.bench.analysis import GOALS, INT8_PAIR
from tumor_edge.bench.ceiling import PRECISIONS
from tumor_edge.contracts.bundle import BundleMetadata, is_optimized_name
from tumor_edge.contracts.formats import format_of
from tumor_edge.contracts.run_folder import RunFolder


def bundle_formats(bundle) -> set[str]:
    meta = BundleMetadata.read(bundle)
    return {format_of(name).key for name in meta.models if not is_optimized_name(name)}


def test_every_format_thread_and_batch_is_timed(record, exported_bundle):
    keys = {(r["format"], r["threads"], r["batch"]) for r in record["results"]}
    formats = bundle_formats(exported_bundle) | {"keras"}
    assert {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"} <= formats
    assert keys == {(f, t, b) for f in formats for t in (1, 2) for b in (1, 3)}, record["skipped"]
    # An optimised twin (old bundles carry them) is never a format of its own.
    assert not any(is_optimized_name(r["file"]) for r in record["results"])
    assert all(r["loaded_file"] for r in record["results"])
    assert all(r["runs"] >= 5 for r in record["results"])
    run = RunFolder(Path(BundleMetadata.read(exported_bundle).provenance["run_dir"]))
    assert record["model"]["keras_reference"] == str(run.model)
    assert record["model"]["inputs"].startswith("test split of")  # real images, not zeros


def test_recorded_statistics_match_numpy_on_the_recorded_timings(record):
    for row in record["results"]:
        ms = np.array(row["timings_ms"])
        assert len(ms) == row["runs"]
        assert row["p50_ms"] == pytest.approx(np.percentile(ms, 50))
        assert row["p90_ms"] == pytest.approx(np.percentile(ms, 90))
        assert row["p99_ms"] == pytest.approx(np.percentile(ms, 99))
        assert row["mean_ms"] == pytest.approx(ms.mean())
        assert row["std_ms"] == pytest.approx(ms.std(ddof=1))
        assert row["min_ms"] == pytest.approx(ms.min())
        assert row["images_per_s"] == pytest.approx(row["batch"] * len(ms) / ms.sum() * 1000)
        assert row["min_ms"] > 0


def test_derived_figures_are_consistent(record):
    rows = {(r["format"], r["threads"], r["batch"]): r for r in record["results"]}
    # Both ceilings, before and after the formats, at 1 and 2 threads.
    assert len(record["ceiling_passes"]) == 2 * 2 * len(PRECISIONS) and record["ceiling_unavailable"] == {}
    ceilings: dict[str, dict[int, float]] = {}
    for c in record["ceiling"]:
        assert c["best_gmacs"] == max(p["best_gmacs"] for p in record["ceiling_passes"]
                                      if p["threads"] == c["threads"] and p["precision"] == c["precision"])
        ceilings.setdefault(c["precision"], {})[c["threads"]] = c["best_gmacs"]
    assert set(ceilings) == {"fp32", "int8"}
    for kind in ceilings.values():
        assert set(kind) == {1, 2} and all(v > 0.1 for v in kind.values())
    macs = record["model"]["macs_per_image"]
    assert macs > 0.1e9
    for (_fmt, t, b), row in rows.items():
        assert row["vs_keras"] == pytest.approx(row["p50_ms"] / rows[("keras", t, b)]["p50_ms"])
        assert row["vs_onnx_fp32"] == pytest.approx(row["p50_ms"] / rows[("onnx-fp32", t, b)]["p50_ms"])
        assert row["gmacs"] == pytest.approx(macs * b / (row["p50_ms"] / 1000) / 1e9)
        # Each file against the ceiling of its own arithmetic: int8 files the int8 one, the rest float32.
        assert row["ceiling_precision"] == ("int8" if row["precision"] == "int8" else "fp32")
        assert row["ceiling_fraction"] == pytest.approx(row["gmacs"] / ceilings[row["ceiling_precision"]][t])
    assert {g["name"] for g in record["goals"]} == {g.name for g in GOALS}
    assert {g["name"] for g in record["goals"]} >= {"ONNX fp32 vs Keras (tf.function)", "ONNX fp32 vs LiteRT fp32",
                                                    "ONNX int8 vs ONNX fp32", "ONNX int8 vs LiteRT int8"}


def test_int8_engine_table_repeats_the_recorded_rows(record):
    left, right = INT8_PAIR
    rows = {(r["format"], r["threads"], r["batch"]): r for r in record["results"]}
    table = record["int8_engines"]
    assert {(e["threads"], e["batch"]) for e in table} == {(t, b) for t in (1, 2) for b in (1, 3)}
    for e in table:
        a, b = rows[(left, e["threads"], e["batch"])], rows[(right, e["threads"], e["batch"])]
        assert (e["left_p50_ms"], e["right_p50_ms"]) == (a["p50_ms"], b["p50_ms"])
        assert e["ratio"] == pytest.approx(a["p50_ms"] / b["p50_ms"])
        assert e["left_ceiling_fraction"] == a["ceiling_fraction"]
        assert e["right_ceiling_fraction"] == b["ceiling_fraction"]


def test_machine_is_described(record):
    machine = record["machine"]
    assert machine["cpu_model"] and machine["usable_cpus"] >= 1
    assert machine["packages"]["onnxruntime"] and machine["python"]
    assert "avx2" in machine["simd"] or machine["architecture"] not in ("x86_64", "AMD64")
    assert machine["int8_acceleration"] and len(machine["load_average"]) == 3
