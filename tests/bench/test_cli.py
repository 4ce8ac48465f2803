"""`tumor-edge bench` in fresh processes, as users run it: outputs, refusal to overwrite, a planted regression
caught by --baseline, one-line errors, and no TensorFlow in the harness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    code = ("import sys; import tumor_edge.bench.commands, tumor_edge.bench.harness; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
