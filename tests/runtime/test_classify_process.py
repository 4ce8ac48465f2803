"""`classify` in real subprocesses: it never imports TensorFlow (or Keras, tf2onnx, onnx), works where TensorFlow
cannot be imported at all, and works in an install with none of the extras (only numpy, Pillow, onnxruntime,
click), where DICOM and .tflite inputs give a one-line install hint instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import onnxruntime
import PIL
import pytest

import tumor_edge
from tests.runtime.models import make_bundle, png_bomb, quadrant_image, save_quadrant, write_dicom

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "tf_keras", "jax", "torch")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("proc")
    bundle = make_bundle(root / "bundle")
    scan = save_quadrant(root / "scans" / "case.png", 3)
    return root, bundle, scan


def _python(args: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("TUMOR_EDGE_MODEL", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=300)


# What `classify` must never load: other extras' packages, and the parts of tumor-edge other commands need.
NOT_FOR_CLASSIFY = (*HEAVY, "importlib.metadata", "email", "zipfile",
                    "matplotlib", "scipy", "sklearn", "pydicom", "nibabel", "starlette", "uvicorn",
                    "ai_edge_litert", "onnxruntime.quantization", "onnxruntime.tools",
                    "tumor_edge.train", "tumor_edge.export", "tumor_edge.bench", "tumor_edge.demo", "tumor_edge.data",
                    "tumor_edge.serve", "tumor_edge.envcmd.commands", "tumor_edge.runtime.verify",
                    "tumor_edge.runtime.readers.dicom", "tumor_edge.runtime.explain")


def test_classify_imports_only_what_it_needs(case, tmp_path):
    """The import contract of the cold-start path (issue 13), in a real process with a warm model cache: it ran
    onnxruntime and gave the right label, loaded no TensorFlow/Keras/tf2onnx/onnx (HEAVY is part of the banned
    list) nor any module of another command or extra, and left numpy's BLAS pool single-threaded (a user's own
    setting wins)."""
    root, bundle, scan = case
    code = textwrap.dedent(f"""
        import json, os, sys
        from tumor_edge.cli import main
        try:
            main(["classify", {str(scan)!r}, "--model", {str(bundle)!r}, "--json"])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        banned = {NOT_FOR_CLASSIFY!r}
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))
        print(json.dumps({{"loaded": loaded, "blas": os.environ.get("OPENBLAS_NUM_THREADS"),
                          "onnxruntime": "onnxruntime" in sys.modules}}))
    """)
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "TUMOR_EDGE_MODEL")}
    base["TUMOR_EDGE_CACHE_DIR"] = str(tmp_path / "cache")
    for blas in (None, "2"):  # the first run also warms the cache for the second
        env = dict(base, **({"OPENBLAS_NUM_THREADS": blas} if blas else {}))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        first, last = result.stdout.strip().splitlines()
        assert json.loads(first)["label"] == "pituitary"
        assert json.loads(last) == {"loaded": [], "blas": blas or "1", "onnxruntime": True}


def test_runtime_api_never_imports_tensorflow(case):
    root, bundle, scan = case
    code = (f"import sys; from tumor_edge.runtime import Classifier; "
            f"print(Classifier.from_bundle({str(bundle)!r}).predict({str(scan)!r}).label); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = _python(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pituitary", "[]"]


def test_cli_help_is_light():
    code = ("import sys; from tumor_edge.cli import main\n"
            "try: main(['classify', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('numpy', 'PIL', 'onnxruntime') if m in sys.modules))")
    result = _python(["-c", code])
    assert result.returncode == 0 and "--batch-size" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


BLOCKER = '''
import importlib.abc, sys

class _Blocker(importlib.abc.MetaPathFinder):
    """Makes TensorFlow and friends unimportable, as on a device without them."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, _Blocker())
'''


def test_classify_with_tensorflow_unimportable(case, tmp_path):
    root, bundle, scan = case
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=HEAVY))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    probe = _python(["-c", "import tensorflow"], env=env)
    assert probe.returncode != 0 and "blocked in this test" in probe.stderr  # the blocker really blocks
    result = _python(["-m", "tumor_edge.cli", "classify", str(scan), "--model", str(bundle), "--csv"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split(",")[2] == "pituitary"


def _minimal_site(folder: Path) -> Path:
    """A site-packages holding only the runtime's dependencies (links to the installed ones) and tumor_edge."""
    site = folder / "site"
    site.mkdir()
    for module in (np, PIL, onnxruntime, click, tumor_edge):
        package = Path(module.__file__).parent
        (site / package.name).symlink_to(package, target_is_directory=True)
        libs = package.parent / f"{package.name}.libs"  # manylinux wheels keep their .so files beside
        for extra in (libs, package.parent / "pillow.libs"):
            if extra.is_dir() and not (site / extra.name).exists():
                (site / extra.name).symlink_to(extra, target_is_directory=True)
    return site


def test_install_without_extras(case, tmp_path):
    root, bundle, scan = case
    site = _minimal_site(tmp_path)
    dicom = write_dicom(tmp_path / "scan.dcm", quadrant_image(0, grey=False).astype(np.uint16))
    tflite = tmp_path / "tfl"
    tflite.mkdir()
    (tflite / "metadata.json").write_text((bundle / "metadata.json").read_text())
    (tflite / "model_fp32.tflite").write_bytes(b"TFL3" + b"\x00" * 64)
    png_bomb(tmp_path / "bomb.png", 9_000, 9_000)
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(site)!r}]
        for name in ("tensorflow", "pydicom", "ai_edge_litert", "onnx", "sklearn"):
            try:
                __import__(name)
                print("importable:", name)
            except ImportError:
                pass
        from tumor_edge.cli import main
        main(sys.argv[1:])
    """)
    # -S: no site-packages of this venv (TensorFlow, pydicom, LiteRT live there); -E: ignore PYTHON* variables
    args = ["-S", "-E", "-c", code, "classify", str(scan), str(dicom), str(tmp_path / "bomb.png"),
            "--model", str(bundle)]
    result = _python(args, cwd=tmp_path)
    assert "importable:" not in result.stdout
    assert result.returncode == 2, result.stderr
    assert "pituitary" in result.stdout.splitlines()[1]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert str(dicom) in errors[0] and "pip install 'tumor-edge[dicom]'" in errors[0]
    assert str(tmp_path / "bomb.png") in errors[1] and "too large" in errors[1]
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr

    result = _python(["-S", "-E", "-c", code, "classify", str(scan), "--model", str(tflite / "model_fp32.tflite")],
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tflite / 'model_fp32.tflite'}: running .tflite files needs LiteRT: "
        "pip install 'tumor-edge[tflite]'")


LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, rusage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), rusage.ru_maxrss)
"""


def test_peak_memory_stays_small(case):
    """Not a benchmark: a guard that nothing heavy (TensorFlow alone is ~850 MB) sneaks into classify.

    Spawned through a bare launcher: Linux carries the spawning process's RSS high-water mark into a child's
    ru_maxrss across fork + exec, and this pytest process may hold gigabytes of TensorFlow by now.
    """
    root, bundle, scan = case
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "tumor_edge.cli", "classify",
                          str(scan), "-m", str(bundle)], capture_output=True, text=True, check=True).stdout
    returncode, maxrss_kb = (int(v) for v in out.split())
    assert returncode == 0
    peak_mb = maxrss_kb / 1024
    assert peak_mb < 150, f"classify peaked at {peak_mb:.0f} MB"
