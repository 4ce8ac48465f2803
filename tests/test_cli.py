"""The `tumor-edge` group itself: one-line errors, the missing-extra message, TensorFlow's start-up noise, `env`.

Each runs the CLI in a subprocess, as a user would. "The runtime install" is emulated by an import blocker that
makes the named packages absent (ModuleNotFoundError, exactly what Python raises for an uninstalled package);
tests/test_install.py checks the same message in a real fresh venv without TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]

BOOT = """
import importlib.abc, sys
blocked = set(filter(None, sys.argv[1].split(",")))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
from tumor_edge import cli
for entry in sys.argv[2].split(","):
    if entry:
        name, target = entry.split("=")
        cli.COMMANDS[name] = target
sys.argv = ["tumor-edge", *sys.argv[3:]]
cli.main()
"""


def run_cli(*args: str, blocked: str = "", extra_commands: str = "", timeout: float = 180
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TUMOR_EDGE_DEBUG", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", BOOT, blocked, extra_commands, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_library_error_is_one_line(tmp_path):
    run = run_cli("classify", "--model", str(tmp_path / "missing"), str(tmp_path / "x.png"))
    assert run.returncode == 1
    assert one_line(run.stderr) == f"error: {tmp_path / 'missing'}: no such bundle or model file"


@pytest.mark.parametrize("command, blocked, extra", [
    (["train", "some/data"], "tensorflow,keras", "train"),
    (["export", "some/run", "--out", "some/bundle"], "tensorflow,tf2onnx,onnx", "train"),
    (["serve"], "starlette,uvicorn,python_multipart", "serve"),
])
def test_missing_extra_is_one_line_naming_it(command, blocked, extra):
    run = run_cli(*command, blocked=blocked)
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert line.startswith(f"error: `tumor-edge {command[0]}` needs the `{extra}` extra")
    assert line.endswith(f"pip install 'tumor-edge[{extra}]'")


def test_help_works_without_the_extra():
    run = run_cli("train", "--help", blocked="tensorflow,keras")
    assert run.returncode == 0 and "InceptionV3" in run.stdout


@click.command()
def needs_pydicom() -> None:
    """Stands for any command whose import of an optional package fails deep inside it."""
    import pydicom  # noqa: F401


def test_deep_missing_module_of_an_extra_is_one_line():
    run = run_cli("probe", blocked="pydicom", extra_commands="probe=tests.test_cli:needs_pydicom")
    assert run.returncode == 1
    assert one_line(run.stderr).endswith("pip install 'tumor-edge[dicom]'")


@click.command()
def tf_probe() -> None:
    """Imports TensorFlow and Keras, runs an op and builds a layer the deprecated way (a Keras UserWarning)."""
    import keras
    import tensorflow as tf

    keras.layers.Dense(2, input_shape=(4,))
    click.echo(f"ran {float(tf.reduce_sum(tf.ones(3)))}")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow (train extra) not installed")
def test_tensorflow_start_up_noise_only_with_debug():
    quiet = run_cli("probe", extra_commands="probe=tests.test_cli:tf_probe")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "ran 3.0"
    assert quiet.stderr == ""
    loud = run_cli("--debug", "probe", extra_commands="probe=tests.test_cli:tf_probe")
    assert loud.returncode == 0
    assert "absl::InitializeLog" in loud.stderr or "oneDNN" in loud.stderr or "input_shape" in loud.stderr


def test_env_reports_versions_isa_providers_and_extras():
    run = run_cli("env", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    ort = info["onnxruntime"]
    assert "CPUExecutionProvider" in ort["available_providers"] and ort["default_choice"] == ["CPUExecutionProvider"]
    assert info["machine"]["packages"]["onnxruntime"] == ort["version"]
    assert set(info["extras"]) >= {"train", "tflite", "dicom", "serve", "nifti"}
    assert info["extras"]["serve"] is (importlib.util.find_spec("starlette") is not None)
    if "CUDAExecutionProvider" not in ort["available_providers"]:
        assert "onnxruntime-gpu" in ort["gpu_hint"]
    text = run_cli("env", blocked="pydicom,tensorflow")  # works (and never imports TensorFlow) without them
    assert text.returncode == 0, text.stderr
    assert "extra dicom     missing pydicom (pip install 'tumor-edge[dicom]')" in text.stdout
    assert "extra train     missing tensorflow (pip install 'tumor-edge[train]')" in text.stdout
