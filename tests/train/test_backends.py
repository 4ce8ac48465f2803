"""Backend choice, the backend-neutral loader and the GPU benchmark script's plan: no model is trained here
(except the PyTorch run at the end, which is slow and needs torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tumor_edge.cli import main
from tumor_edge.data.dataset import PixelCache
from tumor_edge.train.backends import BACKENDS, DEFAULT_BACKEND, select_backend
from tumor_edge.train.fit import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _cache(tmp_path: Path, count: int) -> PixelCache:
    shape = (4, 4, 3)
    pixels = (np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, *shape), np.uint8))
    path = tmp_path / "px.u8"
    path.write_bytes(pixels.tobytes())
    return PixelCache(path, shape, np.arange(count, dtype=np.int32) % 3, [])


def test_training_batches_are_full_and_cover_every_image_each_epoch(tmp_path):
    from tumor_edge.train.model import CacheBatches

    cache = _cache(tmp_path, 10)
    data = CacheBatches(cache, 3, batch_size=4, shuffle=True, seed=1, workers=1)
    assert len(data) == 3
    seen = []
    for i in range(len(data)):
        x, y = data[i]
        assert x.shape == (4, 4, 4, 3) and x.dtype == np.uint8 and y.shape == (4, 3)
        ids = x[:, 0, 0, 0].tolist()
        assert y.argmax(1).tolist() == [j % 3 for j in ids]  # labels travel with their images
        seen += ids
    assert set(seen[:10]) == set(range(10))  # the last batch was topped up after every image came once
    first = data.order.copy()
    data.on_epoch_end()
    assert sorted(data.order) == list(range(10)) and not np.array_equal(first, data.order)


def test_validation_batches_keep_file_order_and_split_evenly_over_devices(tmp_path):
    from tumor_edge.train.model import CacheBatches

    cache = _cache(tmp_path, 11)
    one = CacheBatches(cache, 3, batch_size=4, workers=1)
    assert [one[i][0][:, 0, 0, 0].tolist() for i in range(len(one))] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    two = CacheBatches(cache, 3, batch_size=4, multiple=2, workers=1)  # 2 devices: 10 of the 11 images
    sizes = [len(two[i][0]) for i in range(len(two))]
    assert sizes == [4, 4, 2] and all(s % 2 == 0 for s in sizes)


def test_backend_cannot_change_under_a_loaded_keras():
    """This process runs Keras on TensorFlow (the session's backend): JAX must train in a child process."""
    import keras

    assert keras.backend.backend() == "tensorflow" == DEFAULT_BACKEND
    assert select_backend("tensorflow") is True
    assert select_backend("jax") is False
    from tumor_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown backend"):
        select_backend("mxnet")


def test_train_help_lists_the_backends():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "--backend [" + "|".join(BACKENDS) + "]" in result.output and "--jit-compile" in result.output


def test_gpu_benchmark_plans_train_commands_on_generated_data(tmp_path):
    """The device script's dry run: data generated, one `tumor-edge train` command per configuration."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.training_gpu", "--smoke", "--plan",
                           "--work", str(tmp_path), "--configs", "jax:on:bfloat16,torch:off:float16:noaug"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines() if " tumor_edge.cli train " in line]
    assert len(commands) == 2
    assert commands[0][commands[0].index("--backend") + 1] == "jax" and "--no-augment" not in commands[0]
    assert commands[1][commands[1].index("--mixed-precision") + 1] == "float16" and "--no-augment" in commands[1]
    images = list((tmp_path / "data" / "Training").rglob("*.*"))
    assert len(images) >= 4 * 4
    bad = subprocess.run([sys.executable, "-m", "benchmarks.training_gpu", "--plan",
                          "--configs", "jax:fast:bfloat16"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode != 0 and "bad configuration" in bad.stderr


@pytest.mark.slow
def test_torch_backend_trains_a_complete_run(toy_dataset, tmp_path):
    """PyTorch where installed (not an extra): from scratch, one epoch, the whole run folder."""
    pytest.importorskip("torch", reason="torch is not installed (it is not part of any tumor-edge extra)")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", str(toy_dataset), "--backend", "torch", "--out", str(out), "--weights", "none",
        "--image-size", "75", "--epochs", "1", "--batch-size", "16", "--mixed-precision", "off", "--no-augment"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["backend"]["name"] == "torch" and config["train_config"]["backend"] == "torch"
    assert json.loads((out / "metrics.json").read_text())["n"] == 32
    assert (out / "model.keras").is_file() and (out / "history.csv").is_file()


def test_another_backend_trains_in_a_child_process_whose_errors_come_back(tmp_path, capsys):
    """Keras is loaded on TensorFlow here, so `run_training(backend="jax")` runs in a child process; its
    one-line error comes back as the same error class, and its output is relayed."""
    pytest.importorskip("jax", reason="the jax extra is not installed")
    import keras  # noqa: F401  (the session's backend is fixed before the call)

    from tumor_edge.errors import DatasetError
    from tumor_edge.train.fit import run_training

    missing = tmp_path / "no-such-data"
    with pytest.raises(DatasetError, match="no-such-data"):
        run_training(TrainConfig(data=missing, out=tmp_path / "run", backend="jax", weights="none",
                                 show_progress=False))
    assert not (tmp_path / "run").exists()
    assert "training on the jax backend in a child process (Keras runs tensorflow here)" in capsys.readouterr().out
