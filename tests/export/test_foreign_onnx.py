"""Foreign ONNX models: a tiny PyTorch CNN (NCHW, logits, ImageNet mean-std input), trained for a few steps on
generated 4-class scans, exported with `torch.onnx.export` here, then `tumor-edge export model.onnx ...` through
the real console script: parity against the model's own fp32 outputs, int8, skipped TFLite rows, calibration
on the held-back calibration images, and a bundle `tumor-edge classify` uses. Variants: a dynamic batch, an
NHWC model that outputs probabilities, and a graph that hard-codes its batch of 1.

Synthetic data; a research tool, not a diagnostic device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.toydata import CLASSES, make_toy_dataset

torch = pytest.importorskip("torch", reason="PyTorch (dev extra, x86_64 Python 3.11) makes the foreign ONNX models")

SIZE = 48
# 20 test images a class: enough to PROVE parity within 5 accuracy points (a Wilson bound needs ~73 images for
# 5 points, ~381 for the 1-point default), so the verdict below is a real "pass", not "not proven".
TOLERANCES = ["--max-accuracy-drop", "5", "--max-auc-drop", "0.05"]


class TinyNet(torch.nn.Module):
    """Conv-ReLU x3, global average pooling, linear: logits, NCHW."""

    def __init__(self, hard_coded_batch: bool = False):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, len(CLASSES))
        self.hard_coded_batch = hard_coded_batch

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        # reshape(1, -1) is how some published models flatten: the batch of 1 is then baked into the graph
        return self.fc(x.reshape(1, -1) if self.hard_coded_batch else torch.flatten(x, 1))


class NhwcProbabilities(torch.nn.Module):
    """The same network taking NHWC input and giving probabilities (as a Keras-style export would)."""

    def __init__(self, net: TinyNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x.permute(0, 3, 1, 2)), dim=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Calibration (Training/) and test (Testing/) images the model never trained on."""
    return make_toy_dataset(tmp_path_factory.mktemp("foreign-onnx") / "data", train_per_class=30,
                            test_per_class=20, size=64, seed=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TinyNet:
    """TinyNet trained for a few seconds on its own generated images (another seed), through the runtime's
    decoding and torch scaling, so it is a real classifier, not random weights."""
    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime.preprocess import Preprocessing, scale

    root = make_toy_dataset(tmp_path_factory.mktemp("torch-train") / "data", train_per_class=40,
                            test_per_class=1, size=64, seed=11)
    spec = Preprocessing(SIZE, SIZE, scaling="torch")
    train = load_pixels(discover(root).train, spec, show_progress=False)
    x = torch.from_numpy(np.ascontiguousarray(scale(train.pixels, spec).transpose(0, 3, 1, 2)))
    y = torch.from_numpy(train.labels.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: 60 steps cost 1.6 s of CPU on one thread, ~10x that on all (shared cores)
    try:
        torch.manual_seed(0)
        net = TinyNet()
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(150):
            idx = torch.randint(0, len(y), (32,), generator=generator)
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            accuracy = float((net(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.6, f"the tiny PyTorch model did not learn ({accuracy:.2f})"
    return net


def _torch_export(module, example, path: Path, dynamic: bool = False) -> Path:
    kwargs = {"dynamic_axes": {"input": {0: "n"}, "output": {0: "n"}}} if dynamic else {}
    with torch.no_grad():
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], **kwargs)
    return path


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


def test_pytorch_nchw_logits_model_exports_with_int8_and_passes_parity(trained, data, tmp_path):
    """The issue's case: NCHW, logits, fixed batch 1 as torch exports it by default."""
    import onnx

    from tumor_edge.runtime.classifier import Classifier

    model = _torch_export(trained, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "tiny.onnx")
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
    from tumor_edge.calibration.output_scores import output_score
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.export.foreign_onnx import OnnxModel, inspect_onnx
    from tumor_edge.export.samples import folder_samples
    from tumor_edge.runtime.preprocess import scale

    spec = Classifier.from_bundle(out).preprocessing
    pixels = load_pixels(folder_samples(data / "Testing", list(CLASSES), "Testing")[:12], spec,
                         show_progress=False).pixels
    logits = OnnxModel(model, inspect_onnx(model, len(CLASSES), SIZE)).predict(scale(pixels, spec))
    expected = output_score(logits, "logit_energy")
    energies = Classifier.from_bundle(out).infer_outputs(pixels)["ood_score"]  # the default file: int8
    fp32 = Classifier.from_bundle(out, model_file="model_fp32.onnx").infer_outputs(pixels)["ood_score"]
    np.testing.assert_allclose(fp32, expected, atol=1e-4)
    assert np.corrcoef(energies, expected)[0, 1] > 0.9  # int8 shifts the energies (clipped activations)
    # classify uses the bundle; --heatmap says why there is no picture.
    scans = sorted((data / "Testing" / "glioma").iterdir())[:3]
    classified = _cli("classify", "--model", out, "--json", *scans)
    rows = [json.loads(line) for line in classified.stdout.splitlines() if line.startswith("{")] or \
        json.loads(classified.stdout)
    assert len(rows) == 3 and all(r["label"] in CLASSES for r in rows)
    refused = _cli("classify", "--model", out, "--heatmap", tmp_path / "maps", scans[0], check=False)
    assert refused.returncode != 0 and "no class-activation head" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_dynamic_batch_nhwc_probabilities_and_hard_coded_batch(trained, data, tmp_path):
    """A torch model exported with a dynamic batch; an NHWC model giving probabilities; a graph that bakes in
    its batch of 1, which keeps it, and the runtime feeds it one image at a time."""
    from tumor_edge.runtime.classifier import Classifier

    cases = {
        "dynamic": (_torch_export(trained, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "dyn.onnx", dynamic=True),
                    "nchw", "logits", "dynamic"),
        "nhwc": (_torch_export(NhwcProbabilities(trained), torch.zeros(1, SIZE, SIZE, 3), tmp_path / "nhwc.onnx"),
                 "nhwc", "probabilities", "dynamic"),
    }
    ood_kinds = {"logits": "logit_energy", "probabilities": "max_probability"}
    hard = TinyNet(hard_coded_batch=True)
    hard.load_state_dict(trained.state_dict())
    cases["fixed"] = (_torch_export(hard, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "fixed.onnx"), "nchw",
                      "logits", "fixed 1")
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


def test_one_line_errors_for_models_export_cannot_take(trained, data, tmp_path):
    """Wrong class count, wrong image size, an ambiguous layout: one line each, naming what to say."""
    import onnx
    from onnx import TensorProto, helper

    model = _torch_export(trained, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "tiny.onnx")
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
