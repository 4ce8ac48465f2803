"""Make the tiny PyTorch models that tests/export/test_foreign_onnx.py exports as "models made elsewhere".

The ONNX files beside this script (tests/data/foreign_tinynet/*.onnx, ~15 KB each) are its output, committed so
that the foreign-model tests run without PyTorch (a CUDA build from the public index is several GB). Remake them,
from the repository root, with PyTorch installed (`pip install torch --index-url
https://download.pytorch.org/whl/cpu`):

    python -m tests.data.make_foreign_tinynet

TinyNet (conv-ReLU x3, global average pooling, linear; logits, NCHW, ImageNet mean-std input, 48 px) is trained
for 150 Adam steps on one thread on generated 4-class scans (tests/toydata.py, seed 11), decoded and scaled by
tumor-edge's own code, so it is a real classifier (training accuracy > 0.6 asserted), not random weights. Four
exports of the one trained network, each what a user might bring:
- tinynet.onnx: NCHW logits, the batch of 1 torch exports by default;
- tinynet_dynamic.onnx: the same with a dynamic batch;
- tinynet_nhwc.onnx: NHWC input, probabilities out (as a Keras-style export would give), batch 1;
- tinynet_fixed.onnx: a graph that flattens with reshape(1, -1), so the batch of 1 is baked into it.
Synthetic data; a research tool, not a diagnostic device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.toydata import CLASSES, make_toy_dataset

SIZE = 48
OUT = Path(__file__).resolve().parent / "foreign_tinynet"
FILES = ("tinynet.onnx", "tinynet_dynamic.onnx", "tinynet_nhwc.onnx", "tinynet_fixed.onnx")


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
    """The same network taking NHWC input and giving probabilities."""

    def __init__(self, net: TinyNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x.permute(0, 3, 1, 2)), dim=1)


def train(workdir: Path) -> TinyNet:
    """TinyNet trained on generated images through tumor-edge's decoding and torch scaling."""
    from tumor_edge.data.dataset import discover, load_pixels
    from tumor_edge.runtime import Preprocessing, scale

    root = make_toy_dataset(workdir / "data", train_per_class=40, test_per_class=1, size=64, seed=11)
    spec = Preprocessing(SIZE, SIZE, scaling="torch")
    pixels = load_pixels(discover(root).train, spec, show_progress=False)
    x = torch.from_numpy(np.ascontiguousarray(scale(pixels.pixels, spec).transpose(0, 3, 1, 2)))
    y = torch.from_numpy(pixels.labels.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 60 steps cost 1.6 s of CPU on one thread, ~10x that on all (shared cores)
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
    if accuracy <= 0.6:
        raise SystemExit(f"the tiny PyTorch model did not learn ({accuracy:.2f})")
    return net


def torch_export(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool = False) -> Path:
    """`torch.onnx.export` (TorchScript exporter) with the input/output names the tests expect."""
    kwargs = {"dynamic_axes": {"input": {0: "n"}, "output": {0: "n"}}} if dynamic else {}
    with torch.no_grad():
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], **kwargs)
    return path


def make(out: Path = OUT, workdir: Path | None = None) -> dict[str, Path]:
    """Train once and write the four exports into `out`; returns file name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        net = train(Path(workdir or tmp))
    hard = TinyNet(hard_coded_batch=True)
    hard.load_state_dict(net.state_dict())
    nchw, nhwc = torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, SIZE, SIZE, 3)
    return {
        "tinynet.onnx": torch_export(net, nchw, out / "tinynet.onnx"),
        "tinynet_dynamic.onnx": torch_export(net, nchw, out / "tinynet_dynamic.onnx", dynamic=True),
        "tinynet_nhwc.onnx": torch_export(NhwcProbabilities(net), nhwc, out / "tinynet_nhwc.onnx"),
        "tinynet_fixed.onnx": torch_export(hard, nchw, out / "tinynet_fixed.onnx"),
    }


if __name__ == "__main__":
    for path in make().values():
        print(f"{path} ({path.stat().st_size} bytes)")
