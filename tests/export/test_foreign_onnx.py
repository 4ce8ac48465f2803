"""Foreign ONNX models: a tiny PyTorch CNN (NCHW, logits, ImageNet mean-std input), trained on generated 4-class
scans and exported with `torch.onnx.export` by tests/data/make_foreign_tinynet.py (its output is committed in
tests/data/foreign_tinynet/, so these tests need no PyTorch), then `tumor-edge export model.onnx ...` through the
real console script: parity against the model's own fp32 outputs, int8, skipped TFLite rows, calibration on the
held-back calibration images, and a bundle `tumor-edge classify` uses. Variants: a dynamic batch, an NHWC model
that outputs probabilities, and a graph that hard-codes its batch of 1. Where PyTorch is installed, one more test
exports a freshly trained model with today's torch and takes it through export.

Synthetic data; a research tool, not a diagnostic device.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.toydata import CLASSES, make_toy_dataset

SIZE = 48
MODELS = Path(__file__).resolve().parents[1] / "data" / "foreign_tinynet"
# 20 test images a class: enough to PROVE parity within 5 accuracy points (a Wilson bound needs ~73 images for
# 5 points, ~381 for the 1-point default), so the verdict below is a real "pass", not "not proven".
TOLERANCES = ["--max-accuracy-drop", "5", "--max-auc-drop", "0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Calibration (Training/) and test (Testing/) images the model never trained on."""
    return make_toy_dataset(tmp_path_factory.mktemp("foreign-onnx") / "data", train_per_class=30,
                            test_per_class=20, size=64, seed=5)


def _model(name: str, tmp_path: Path) -> Path:
    """A copy of one committed TinyNet export (the tests never touch the committed file)."""
    return Path(shutil.copy(MODELS / name, tmp_path / name))


def _cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """The real console script in a fresh process, importing this tree."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = Path(sys.executable).with_name("tumor-edge")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "tumor_edge.cli"]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _export(model: Path, out: Path, data: Path, *extra, check: bool = True) -> subprocess.CompletedProcess:
    return _cli("export", model, "--out", out, "--classes", ",".join(CLASSES), "--image-size", SIZE,
                "--preprocess", "torch", "--test-data", data / "Testing", "--calib-data", data, *TOLERANCES,
                "--quiet", *extra, check=check)


@pytest.mark.slow  # exports
def test_pytorch_nchw_logits_model_exports_with_int8_and_passes_parity(data, tmp_path):
    """The issue's case: NCHW, logits, fixed batch 1 as torch exports it by default."""
    import onnx

    from tumor_edge.runtime import Classifier

    model = _model("tinynet.onnx", tmp_path)
    out = tmp_path / "bundle"
    # --allow-unproven: whether int8 is PROVEN within 5 points on 80 images depends on one flipped image, which
    # depends on the CPU's int8 kernels (reduce_range); a FAIL still fails the export.
    result = _export(model, out, data, "--int8", "--allow-unproven")
    assert "skipped: no converter route from ONNX to TFLite" in result.stdout  # the rows are shown, not a crash
    meta = json.loads((out / "metadata.json").read_text())
    files = meta["metrics"]["parity"]["files"]
    assert set(files) == {"model_fp32.onnx", "model_int8.onnx"}
    assert files["model_fp32.onnx"]["verdict"] == "pass", files
    assert files["model_fp32.onnx"]["agreement"] == 1.0
    assert files["model_fp32.onnx"]["max_abs_diff"] < 1e-4  # the runtime reproduces the model's own outputs
    int8 = files["model_int8.onnx"]
    assert int8["verdict"] in ("pass", "not proven") and int8["agreement"] >= 0.95
    assert not list(out.glob("*.tflite"))
    report = (out / "parity.md").read_text()
    assert "no converter route from ONNX to TFLite" in report
    fp32 = meta["models"]["model_fp32.onnx"]
    assert fp32["source_layout"] == "nchw" and fp32["input_transposed"] and fp32["softmax_appended"]
    assert fp32["batch"].startswith("dynamic") and fp32["opset"] == onnx.load(str(model)).opset_import[0].version
    assert meta["provenance"]["output"]["model_output"] == "logits"
    assert meta["calibration"]["temperature"] > 0 and "held-out" in meta["calibration"]["fitted_on_data"]
    assert "heatmap" not in meta["outputs"]
    # OOD from the outputs only: the energy of the logits, computed inside the file, threshold on held-back images
    assert (meta["outputs"]["ood_score"]["index"], meta["outputs"]["ood_score"]["type"]) == (1, "logit_energy")
    ood = meta["ood"]
    assert ood["score"] == "logit_energy" and ood["tpr"] == 0.95 and "held-out" in ood["fitted_on_data"]
    assert ood["evaluation"]["uniform noise"]["either_flagged"] == 1.0
    assert "Output-score check" in (out / "MODEL_CARD.md").read_text()
    # The bundle's file alone: NHWC float input with a dynamic batch, the tumor-edge metadata inside it.
    wrapped = onnx.load(str(out / "model_fp32.onnx"))
    dims = wrapped.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    assert "tumor_edge" in {p.key for p in wrapped.metadata_props}
    lone = Classifier.from_bundle(out / "model_fp32.onnx")
    assert lone.classes == list(CLASSES)
    # The energy output of each bundle file is the numpy energy of the original model's logits.
    from tumor_edge.calibration.mahalanobis import output_score
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.export.foreign_onnx import OnnxModel, inspect_onnx
    from tumor_edge.export.samples import folder_samples
    from tumor_edge.runtime import scale

    spec = Classifier.from_bundle(out).preprocessing
    pixels = load_pixels(folder_samples(data / "Testing", list(CLASSES), "Testing")[:12], spec,
                         show_progress=False).pixels
    logits = OnnxModel(model, inspect_onnx(model, len(CLASSES), SIZE)).predict(scale(pixels, spec))
    expected = output_score(logits, "logit_energy")
    energies = Classifier.from_bundle(out).infer_outputs(pixels)["ood_score"]  # the default file: int8
    fp32 = Classifier.from_bundle(out, model_file="model_fp32.onnx").infer_outputs(pixels)["ood_score"]
    np.testing.assert_allclose(fp32, expected, atol=1e-4)
    assert np.corrcoef(energies, expected)[0, 1] > 0.9  # int8 shifts the energies (clipped activations)
    # classify uses the bundle; --heatmap draws each scan's map through the model (it has no class-activation
    # head), and the exact-CAM method alone is refused with the reason.
    scans = sorted((data / "Testing" / "glioma").iterdir())[:3]
    classified = _cli("classify", "--model", out, "--json", "--heatmap", tmp_path / "maps", *scans)
    rows = [json.loads(line) for line in classified.stdout.splitlines() if line.startswith("{")] or \
        json.loads(classified.stdout)
    assert len(rows) == 3 and all(r["label"] in CLASSES for r in rows)
    assert all(r["heatmap_method"].startswith("occlusion") and Path(r["heatmap_png"]).is_file() for r in rows)
    assert len(set(r["heatmap_png"] for r in rows)) == 3
    refused = _cli("classify", "--model", out, "--heatmap", tmp_path / "cams", "--heatmap-method", "cam", scans[0],
                   check=False)
    assert refused.returncode != 0 and "no class-activation map output" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow  # exports
def test_dynamic_batch_nhwc_probabilities_and_hard_coded_batch(data, tmp_path):
    """A torch model exported with a dynamic batch; an NHWC model giving probabilities; a graph that bakes in
    its batch of 1, which keeps it, and the runtime feeds it one image at a time."""
    from tumor_edge.runtime import Classifier

    cases = {
        "dynamic": (_model("tinynet_dynamic.onnx", tmp_path), "nchw", "logits", "dynamic"),
        "nhwc": (_model("tinynet_nhwc.onnx", tmp_path), "nhwc", "probabilities", "dynamic"),
        "fixed": (_model("tinynet_fixed.onnx", tmp_path), "nchw", "logits", "fixed 1"),
    }
    ood_kinds = {"logits": "logit_energy", "probabilities": "max_probability"}
    for name, (model, layout, output, batch) in cases.items():
        out = tmp_path / f"bundle-{name}"
        if name == "fixed":  # int8 calibrates in batches: that row fails with its reason, fp32 is kept and proven
            failed = _export(model, out, data, "--formats", "onnx", "--int8", "--in-process", check=False)
            assert failed.returncode != 0 and "this graph's batch is fixed 1" in failed.stderr, failed.stderr
        else:
            _export(model, out, data, "--formats", "onnx", "--in-process")
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["ood"]["score"] == ood_kinds[output], name
        entry = meta["models"]["model_fp32.onnx"]
        assert (entry["source_layout"], meta["provenance"]["output"]["model_output"]) == (layout, output), name
        assert entry["batch"].startswith(batch), (name, entry["batch"])
        assert meta["metrics"]["parity"]["files"]["model_fp32.onnx"]["agreement"] == 1.0, name
        # a batch of 5 through the Python API: one run for a dynamic batch, five for the fixed one
        clf = Classifier.from_bundle(out)
        scans = sorted((data / "Testing" / "pituitary").iterdir())[:5]
        together = np.array([[p.probabilities[c] for c in CLASSES] for p in clf.predict_batch(scans)])
        alone = np.array([[clf.predict(s).probabilities[c] for c in CLASSES] for s in scans])
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_one_line_errors_for_models_export_cannot_take(data, tmp_path):
    """Wrong class count, wrong image size, an ambiguous layout: one line each, naming what to say."""
    import onnx
    from onnx import TensorProto, helper

    model = _model("tinynet.onnx", tmp_path)
    three = _cli("export", model, "--out", tmp_path / "a", "--classes", "a,b,c", "--preprocess", "torch",
                 "--test-data", data / "Testing", "--quiet", check=False)
    assert three.returncode != 0 and "4 outputs but 3 classes" in three.stderr and "Traceback" not in three.stderr
    size = _cli("export", model, "--out", tmp_path / "b", "--classes", ",".join(CLASSES), "--image-size", 64,
                "--preprocess", "torch", "--test-data", data / "Testing", "--quiet", check=False)
    assert size.returncode != 0 and "48x48" in size.stderr and "--image-size" in size.stderr
    # (N, 3, 8, 3): channels first or last? Only the user knows.
    ambiguous = helper.make_model(helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(ambiguous, tmp_path / "ambiguous.onnx")
    unclear = _cli("export", tmp_path / "ambiguous.onnx", "--out", tmp_path / "c", "--classes", "a,b,c",
                   "--preprocess", "unit", "--test-data", data / "Testing", "--quiet", check=False)
    assert unclear.returncode != 0 and "--layout" in unclear.stderr and len(unclear.stderr.strip().splitlines()) == 1
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    bad = _cli("export", garbage, "--out", tmp_path / "d", "--classes", ",".join(CLASSES), "--preprocess", "torch",
               "--test-data", data / "Testing", "--quiet", check=False)
    assert bad.returncode != 0 and "not a valid ONNX model" in bad.stderr and "Traceback" not in bad.stderr


def test_the_committed_models_run_in_onnxruntime():
    """The four committed files load and agree with each other: one trained network, four ways of exporting it."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    nchw = rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)

    def run(name: str, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    logits = run("tinynet.onnx", nchw)
    assert logits.shape == (1, len(CLASSES))
    for name in ("tinynet_dynamic.onnx", "tinynet_fixed.onnx"):
        np.testing.assert_allclose(run(name, nchw), logits, rtol=1e-5, atol=1e-5)
    e = np.exp(logits - logits.max())
    np.testing.assert_allclose(run("tinynet_nhwc.onnx", nchw.transpose(0, 2, 3, 1)), e / e.sum(), atol=1e-5)
    assert run("tinynet_dynamic.onnx", np.repeat(nchw, 3, axis=0)).shape == (3, len(CLASSES))


def test_a_model_todays_pytorch_exports_goes_through_export(data, tmp_path):
    """The committed files are what one torch version made; a model exported by the installed PyTorch (its
    exporter's graphs change between versions) is trained, exported and proven the same way."""
    pytest.importorskip("torch", reason="PyTorch is not installed: the committed exports "
                                        "(tests/data/foreign_tinynet) are tested instead")
    from tests.data.make_foreign_tinynet import make

    made = make(tmp_path / "made", workdir=tmp_path / "train")
    out = tmp_path / "bundle"
    _export(made["tinynet.onnx"], out, data, "--formats", "onnx", "--in-process")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["metrics"]["parity"]["files"]["model_fp32.onnx"]["verdict"] == "pass"
    assert meta["metrics"]["parity"]["files"]["model_fp32.onnx"]["agreement"] == 1.0
