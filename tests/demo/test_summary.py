"""The demo summary's parity headline states each file's verdict."""

from __future__ import annotations

from tumor_edge.demo.pipeline import parity_headline


def test_not_proven_files_are_named_not_hidden_under_passed():
    """A summary must not print "passed" above int8 rows that read "not proven"."""
    export = {"parity_passed": True, "parity_verdict": "not proven",
              "parity_files": {"model_fp32.onnx": "pass", "model_int8.onnx": "not proven",
                               "model_fp32.tflite": "pass", "model_int8.tflite": "not proven"}}
    line = parity_headline(export)
    assert not line.lower().startswith("passed")
    assert "2 pass (`model_fp32.onnx`, `model_fp32.tflite`)" in line
    assert "2 not proven (`model_int8.onnx`, `model_int8.tflite`)" in line and "too small" in line


def test_all_pass_and_a_failure():
    one = {"parity_passed": True, "parity_files": {"a.onnx": "pass"}}
    assert parity_headline(one) == "Per file: 1 pass (`a.onnx`)."
    assert parity_headline({"parity_passed": False, "parity_failure": "model_int8.onnx: agreement 80%"}) == \
        "FAILED: model_int8.onnx: agreement 80%"
