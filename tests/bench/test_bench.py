"""The latency harness on a tiny real model: statistics against numpy on the recorded timings, derived figures,
MAC counting, cold start, the CLI's outputs and errors, and a planted regression caught by --baseline."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tumor_edge.bench.analysis import add_rates, add_ratios, check_goals
from tumor_edge.bench.compare import compare_records, load_record
from tumor_edge.bench.stats import percentile, summarize
from tumor_edge.bench.timing import RunPlan, measure, measure_interleaved
from tumor_edge.errors import TumorEdgeError

SIZE = 32
# MACs of the tiny model below, by hand: conv 3x3 stride 2 (3->8) on 32x32 -> 16x16x8, each 3*3*3 MACs;
# depthwise 3x3 on 16x16x8, each 9; pointwise 8->16 on 16x16; dense 16->4.
TINY_MACS = 16 * 16 * 8 * 27 + 16 * 16 * 8 * 9 + 16 * 16 * 16 * 8 + 16 * 4


# ---- pure functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
@pytest.mark.parametrize("batch", [1, 8])
def test_summarize_matches_numpy(n, batch):
    rng = np.random.default_rng(n)
    timings = list(rng.lognormal(-3.0, 0.5, n))  # seconds, skewed like real latencies
    stats = summarize(timings, batch)
    ms = np.array(timings) * 1000
    assert stats.runs == n and stats.batch == batch
    assert stats.min_ms == pytest.approx(ms.min())
    assert stats.max_ms == pytest.approx(ms.max())
    for q, value in ((50, stats.p50_ms), (90, stats.p90_ms), (99, stats.p99_ms)):
        assert value == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert stats.mean_ms == pytest.approx(ms.mean(), rel=1e-12)
    assert stats.std_ms == pytest.approx(ms.std(ddof=1) if n > 1 else 0.0, rel=1e-9, abs=1e-12)
    assert stats.images_per_s == pytest.approx(batch * n / ms.sum() * 1000)
    assert stats.p50_per_image_ms == pytest.approx(np.median(ms) / batch)


def test_percentile_and_summary_reject_nonsense():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        summarize([], 1)
    with pytest.raises(ValueError):
        summarize([0.1], 0)


def test_measure_warms_up_then_runs_at_least_n_and_s():
    calls: list[int] = []

    def call(i: int) -> None:
        calls.append(i)
        time.sleep(0.002)

    timings = measure(call, RunPlan(warmup=2, min_runs=5, min_seconds=0.0))
    assert len(timings) == 5 and len(calls) == 7 and calls == list(range(7))
    assert all(t >= 0.0019 for t in timings)
    calls.clear()
    timings = measure(call, RunPlan(warmup=0, min_runs=1, min_seconds=0.05))
    assert sum(timings) >= 0.05 and len(timings) >= 10
    with pytest.raises(ValueError):
        RunPlan(min_runs=0)


def test_interleaved_rounds_alternate_and_each_call_meets_the_plan():
    order: list[str] = []

    def call(key: str, seconds: float):
        def run(i: int) -> float:
            order.append(key)
            return seconds  # a call reports its own duration (as the Keras worker does)
        return run

    # Durations exact in binary, so the seconds add up without rounding.
    timings = measure_interleaved({"fast": call("fast", 1 / 64), "slow": call("slow", 1 / 8)},
                                  RunPlan(warmup=1, min_runs=3, min_seconds=0.25))
    assert order[:2] == ["fast", "slow"]  # warm-up: one each
    assert order[2:8] == ["fast", "slow", "slow", "fast", "fast", "slow"]  # the start rotates each round
    assert len(timings["slow"]) == 3  # min_runs: 3 runs (0.375 s >= 0.25 s)
    assert len(timings["fast"]) == 16  # min_seconds: 0.25 s at 1/64 s a run, alone once slow was done
    assert order[8:] == ["fast"] * 13


def _row(fmt, threads, batch, p50):
    return {"format": fmt, "threads": threads, "batch": batch, "p50_ms": p50, "p90_ms": p50 * 1.1}


def test_ratios_rates_and_goals():
    rows = [_row("keras", 2, 1, 100.0), _row("onnx-fp32", 2, 1, 40.0), _row("onnx-int8", 2, 1, 30.0),
            _row("tflite-fp32", 2, 1, 60.0), _row("onnx-fp32", 1, 8, 400.0)]
    add_ratios(rows)
    add_rates(rows, 2_000_000_000, {2: 100.0})
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
    goal = {g["name"]: g for g in check_goals(rows, 2, 1, 2_000_000_000, 40.0)}["ONNX fp32 vs Keras (tf.function)"]
    assert goal["required_ceiling_fraction"] == pytest.approx(2.0 / 0.045 / 40.0)
    assert goal["reachable_in_fp32"] is False
    goal = {g["name"]: g for g in check_goals(rows, 2, 1, 2_000_000_000, 50.0)}["ONNX fp32 vs Keras (tf.function)"]
    assert goal["reachable_in_fp32"] is True


def test_compare_flags_only_the_planted_regression():
    base = {"schema": "tumor-edge-bench/1", "results": [_row("onnx-fp32", 2, 1, 40.0), _row("onnx-int8", 2, 1, 30.0)],
            "cold_start": [{"format": "onnx-fp32", "median_s": 0.5, "peak_rss_mb": 200.0}]}
    now = copy.deepcopy(base)
    now["results"][1]["p50_ms"] = 30.0 * 1.25  # planted: int8 p50 25 % slower
    now["results"][0]["p50_ms"] = 40.0 * 1.05  # within tolerance
    comparisons = {(c.figure, c.metric): c for c in compare_records(now, base, tolerance=0.10)}
    assert comparisons[("onnx-int8 threads=2 batch=1", "p50_ms")].regressed
    assert comparisons[("onnx-int8 threads=2 batch=1", "p50_ms")].ratio == pytest.approx(1.25)
    assert not comparisons[("onnx-fp32 threads=2 batch=1", "p50_ms")].regressed
    assert [k for k, c in comparisons.items() if c.regressed] == [("onnx-int8 threads=2 batch=1", "p50_ms")]
    assert comparisons[("cold start onnx-fp32", "peak_rss_mb")].ratio == pytest.approx(1.0)


def test_load_record_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TumorEdgeError, match="bad.json: unreadable baseline"):
        load_record(bad)
    other = tmp_path / "other.json"
    other.write_text('{"results": []}')
    with pytest.raises(TumorEdgeError, match="other.json: not a tumor-edge bench record"):
        load_record(other)
    with pytest.raises(TumorEdgeError, match="missing.json: baseline file not found"):
        load_record(tmp_path / "missing.json")


# ---- MACs counted from a graph, against a hand count ---------------------------------------------------------


def _tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """The tiny model above as fp32 and int8 (QDQ) ONNX, through the bench's own stand-in converter."""
    from tumor_edge.bench.random_bundle import export_random_bundle
    from tumor_edge.runtime.preprocess import Preprocessing

    base = tmp_path_factory.mktemp("tiny")
    run = base / "run"
    run.mkdir()
    _tiny_model().save(run / "model.keras")
    spec = Preprocessing(SIZE, SIZE, "bilinear", "none")
    (run / "config.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "preprocessing": spec.to_dict()}))
    return export_random_bundle(run, base / "bundle", files=("model_fp32.onnx", "model_int8.onnx"),
                                calibration_count=4)


def test_count_macs_matches_the_hand_count(tiny_onnx, exported_bundle):
    from tumor_edge.bench.macs import count_macs

    assert count_macs(tiny_onnx / "model_fp32.onnx") == TINY_MACS
    assert count_macs(tiny_onnx / "model_int8.onnx") == TINY_MACS  # QDQ keeps the Conv/MatMul nodes
    assert count_macs(tiny_onnx / "metadata.json") is None  # not a model: no count, no crash
    # The session's InceptionV3, counted independently from its Keras layers.
    assert count_macs(exported_bundle / "model_fp32.onnx") == _keras_macs(_run_model(exported_bundle))


def _run_model(bundle: Path):
    import keras

    from tumor_edge.contracts.bundle import BundleMetadata

    return keras.models.load_model(Path(BundleMetadata.read(bundle).provenance["run_dir"]) / "model.keras",
                                   compile=False)


def _keras_macs(model) -> int:
    """Conv2D: output H*W*C_out x kernel h*w*C_in; Dense: in*out; nested models walked."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _keras_macs(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, _ = layer.kernel.shape
            _, h, w, cout = layer.output.shape
            total += h * w * cout * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


# ---- the harness on the session's exported bundle (a tiny trained InceptionV3, every format) -------------


def _bundle_formats(bundle: Path) -> set[str]:
    from tumor_edge.contracts.bundle import BundleMetadata, is_optimized_name

    meta = BundleMetadata.read(bundle)
    return {f"{e.format}-{e.precision}" for name, e in meta.models.items() if not is_optimized_name(name)}


@pytest.fixture(scope="module")
def record(exported_bundle) -> dict:
    from tumor_edge.bench.harness import BenchConfig, run_bench

    config = BenchConfig(model=exported_bundle, threads=[1, 2], batches=[1, 3], plan=RunPlan(1, 5, 0.0),
                         image_count=6, cold_runs=1, show_progress=False)
    return run_bench(config)


def test_every_format_thread_and_batch_is_timed(record, exported_bundle):
    keys = {(r["format"], r["threads"], r["batch"]) for r in record["results"]}
    formats = _bundle_formats(exported_bundle) | {"keras"}
    assert {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"} <= formats
    assert keys == {(f, t, b) for f in formats for t in (1, 2) for b in (1, 3)}, record["skipped"]
    # A pre-optimised twin is what onnxruntime loads for its source, not a format of its own.
    assert any(r["loaded_file"].endswith(".ort.onnx") for r in record["results"] if r["format"] == "onnx-fp32")
    assert all(r["runs"] >= 5 for r in record["results"])
    assert record["model"]["keras_reference"].endswith("model.keras")
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
    ceilings = {c["threads"]: c["best_gmacs"] for c in record["ceiling"]}
    assert len(record["ceiling_passes"]) == 4  # before and after, 1 and 2 threads
    for c in record["ceiling"]:
        assert c["best_gmacs"] == max(p["best_gmacs"] for p in record["ceiling_passes"] if p["threads"] == c["threads"])
    assert set(ceilings) == {1, 2} and all(v > 0.1 for v in ceilings.values())
    macs = record["model"]["macs_per_image"]
    assert macs > 0.1e9
    for (_fmt, t, b), row in rows.items():
        assert row["vs_keras"] == pytest.approx(row["p50_ms"] / rows[("keras", t, b)]["p50_ms"])
        assert row["vs_onnx_fp32"] == pytest.approx(row["p50_ms"] / rows[("onnx-fp32", t, b)]["p50_ms"])
        assert row["gmacs"] == pytest.approx(macs * b / (row["p50_ms"] / 1000) / 1e9)
        assert row["ceiling_fraction"] == pytest.approx(row["gmacs"] / ceilings[t])
    assert {g["name"] for g in record["goals"]} == {"ONNX fp32 vs Keras (tf.function)", "ONNX fp32 vs LiteRT fp32",
                                                    "ONNX int8 vs ONNX fp32"}


def test_cold_start_per_format_with_peak_memory(record, exported_bundle):
    cold = {c["format"]: c for c in record["cold_start"]}
    assert set(cold) == _bundle_formats(exported_bundle) | {"keras"}
    for c in cold.values():
        assert 0 < c["min_s"] <= c["median_s"] < 120
        assert c["child"]["load_s"] >= 0 and c["child"]["first_inference_s"] > 0
    # The probe's own peak, not the harness's: onnxruntime needs tens of MB, TensorFlow several hundred.
    assert 20 < cold["onnx-fp32"]["peak_rss_mb"] < cold["keras"]["peak_rss_mb"]


def test_machine_is_described(record):
    machine = record["machine"]
    assert machine["cpu_model"] and machine["usable_cpus"] >= 1
    assert machine["packages"]["onnxruntime"] and machine["python"]
    assert "avx2" in machine["simd"] or machine["architecture"] not in ("x86_64", "AMD64")
    assert machine["int8_acceleration"] and len(machine["load_average"]) == 3


def test_reports_render(record, tmp_path):
    from tumor_edge.bench.report import render_chart, render_markdown, render_text

    text = render_text(record)
    assert "onnx-int8" in text and "cold start" in text and "vs Keras" in text
    md = render_markdown(record, "chart.png")
    assert md.count("| keras |") == 4 + 1 and "![latency" in md  # 2 threads x 2 batches, and its cold start
    png = render_chart(record, tmp_path / "chart.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the CLI, in fresh processes as users run it -----------------------------------------------------------

QUICK = ["--threads", "1", "--batch", "1", "--warmup", "1", "--min-runs", "3", "--min-seconds", "0",
         "--cold-runs", "0", "--no-ceiling", "--no-keras", "--quiet"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumor_edge.cli", "bench", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_json_markdown_chart_and_refuses_overwrite(exported_bundle, tmp_path):
    out = tmp_path / "bench.json"
    proc = _cli("--model", str(exported_bundle), "--formats", "onnx-fp32,tflite-int8", "--json", str(out), *QUICK)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert {r["format"] for r in data["results"]} == {"onnx-fp32", "tflite-int8"}
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    assert "p50 ms" in proc.stdout
    again = _cli("--model", str(exported_bundle), "--formats", "onnx-fp32", "--json", str(out), *QUICK)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: {out}: already exists")
    assert "Traceback" not in again.stderr


def test_cli_baseline_flags_a_planted_regression(exported_bundle, tmp_path):
    first = tmp_path / "first.json"
    assert _cli("--model", str(exported_bundle), "--formats", "onnx-fp32,onnx-int8", "--json", str(first),
                *QUICK).returncode == 0
    planted = json.loads(first.read_text())
    for row in planted["results"]:
        if row["format"] == "onnx-int8":
            row["p50_ms"] /= 100.0  # the saved run was 100x faster: now is a regression
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(planted))
    proc = _cli("--model", str(exported_bundle), "--formats", "onnx-fp32,onnx-int8", "--baseline", str(baseline),
                "--tolerance", "5", "--fail-on-regression", *QUICK)
    assert proc.returncode == 4, proc.stderr
    flagged = [line for line in proc.stdout.splitlines() if "REGRESSION" in line]
    assert len(flagged) == 1 and flagged[0].startswith("onnx-int8 threads=1 batch=1") and "p50_ms" in flagged[0]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 figure(s) slower than the baseline")
    calm = _cli("--model", str(exported_bundle), "--formats", "onnx-fp32,onnx-int8", "--baseline", str(baseline),
                "--tolerance", "5", *QUICK)  # without --fail-on-regression: flagged, exit 0
    assert calm.returncode == 0 and "REGRESSION" in calm.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/bundle"], "/nonexistent/bundle: no such bundle or model file"),
    (["--formats", "onnx-fp64"], "format(s) onnx-fp64 not in this bundle; it has"),
    (["--baseline", "BUNDLE/metadata.json"], "metadata.json: not a tumor-edge bench record"),
    (["--threads", "0"], "Invalid value for '--threads'"),
])
def test_cli_errors_are_one_line(exported_bundle, args, message):
    args = [a.replace("BUNDLE", str(exported_bundle)) for a in args]
    model = [] if "--model" in args else ["--model", str(exported_bundle)]
    proc = _cli(*model, *QUICK, *args)  # args last: they override QUICK
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_harness_and_cli_import_no_tensorflow():
    code = ("import sys; import tumor_edge.bench.commands, tumor_edge.bench.output, tumor_edge.bench.harness; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_history_readme_lists_runs_oldest_first_with_ratio_to_previous(record, tmp_path):
    from tumor_edge.bench.history import load_history, render_readme, result_name, unique_path

    results = tmp_path / "results"
    results.mkdir()
    first = copy.deepcopy(record)
    first["created"], first["suite"] = "2026-01-01T00:00:00+00:00", {"commit": "a" * 40, "total_s": 500.0}
    second = copy.deepcopy(record)
    second["created"], second["suite"] = "2026-01-02T00:00:00+00:00", {"commit": "b" * 40, "dirty": True}
    for row in second["results"]:
        row["p50_ms"] *= 2  # the later run is twice as slow
    for rec in (second, first):  # written out of order: the history sorts by creation time
        path = unique_path(results, result_name(rec))
        path.write_text(json.dumps(rec))
    assert result_name(first) == "2026-01-01-aaaaaaaaaa"
    assert unique_path(results, result_name(first)).name == "2026-01-01-aaaaaaaaaa-2.json"
    history = load_history(results)
    assert [p.name for p, _ in history] == ["2026-01-01-aaaaaaaaaa.json", "2026-01-02-bbbbbbbbbb.json"]
    text = render_readme(history, "# Benchmarks", "results/latest.png")
    rows = [line for line in text.splitlines() if line.startswith("| 2026-01-0")]
    assert len(rows) == 2 and "aaaaaaaaaa |" in rows[0] and "bbbbbbbbbb+ |" in rows[1]
    assert rows[0].count(" - |") >= 1 and "| 2.00x |" in rows[1]  # no previous run; then twice as slow
    assert "## Latest: 2026-01-02" in text and "![latency" in text and "## History" in text
