"""Training on several devices and several machines, with TensorFlow's own strategies, on this CPU:
MirroredStrategy over two logical CPU devices, MultiWorkerMirroredStrategy over two worker processes on
loopback. Bounded in time: a hung collective fails the test instead of hanging CI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tumor_edge.cli import main

pytestmark = pytest.mark.slow
LIMIT_S = 600
TINY = ["--image-size", "75", "--weights", "none", "--epochs", "1", "--batch-size", "8",
        "--mixed-precision", "off", "--no-augment", "--seed", "2"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}  # TensorFlow parses even an empty one
    return {**env, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def _assert_run_loads_and_evaluates(run: Path, tmp_path: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    result = CliRunner().invoke(main, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 32
    return config


def test_two_workers_on_loopback_write_one_run(toy_dataset, tmp_path):
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    out = tmp_path / "run"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "tumor_edge.cli", "train", str(toy_dataset), "--out", str(out),
               "--worker-hosts", hosts, "--task-index", str(i), *TINY]
        procs.append(subprocess.Popen(cmd, stdout=logs[i].open("w"), stderr=subprocess.STDOUT, env=_env()))
    try:
        codes = [p.wait(timeout=LIMIT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n---\n".join(t[-3000:] for t in text)
    assert "run folder:" in text[0] and "worker 1 done; the chief writes the run folder" in text[1]
    config = _assert_run_loads_and_evaluates(out, tmp_path)
    dist = config["distribution"]
    assert dist["kind"] == "multi-worker" and dist["workers"] == 2 and dist["replicas"] == 2 and dist["chief"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.keras", "config.json", "split.json", "history.csv", "metrics.json", "test_predictions.npz",
         "roc.png", "confusion_matrix.png", "training_curves.png"])


def test_mirrored_over_two_logical_cpu_devices(toy_dataset, tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tumor_edge.cli import main
        main(["train", {str(toy_dataset)!r}, "--out", {str(out)!r}, "--strategy", "mirrored", *{TINY!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(),
                          timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = _assert_run_loads_and_evaluates(out, tmp_path)
    dist = config["distribution"]
    assert dist["kind"] == "mirrored" and dist["replicas"] == 2 and len(dist["devices"]) == 2
    assert "MirroredStrategy (mirrored): 2 replica(s)" in proc.stdout
    # the global batch is the per-replica batch times the replicas
    assert "global batch 16" in proc.stdout
