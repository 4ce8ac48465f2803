"""The ARM64 device check: the wheel, installed with the aarch64 wheels of its runtime dependencies in a Debian arm64
root under qemu-user (tests/runtime/arm64_root.py), verifies the bundle the suite exported and classifies scans as
x86 does, within verify's per-precision tolerances.

Only the ONNX files run there: they are what the runtime-only install (`pip install tumor-edge`) checks, and the
emulator runs them about 30x slower than this CPU would. LiteRT's aarch64 wheel is tried on its own test, which
skips when it does not install. Every step's seconds and the observed x86/ARM64 differences are printed
(pytest -rP or -s shows them).

Skips (with the reason) where the emulator cannot be set up: not root, no qemu-user-static/debootstrap, no
binfmt_misc, Debian mirror or package registry unreachable. A wheel that does not install in the root, a verify
that fails there or outputs that differ beyond tolerance fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.arm64_root import Device, Timings, Unavailable, new_device, prepare_root
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.runtime.verify import DEFAULT_TOLERANCE

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="tomllib (Python 3.11+) or tomli is needed to read pyproject")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGES_PER_CLASS = 2  # 8 scans: enough to compare labels and probabilities, cheap under the emulator
CLI_TIMEOUT_S = 900


def runtime_requirements() -> list[str]:
    """pyproject's runtime dependencies, as declared: the device gets what `pip install tumor-edge` resolves."""
    return list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def build_wheel(out: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = out.glob("tumor_edge-*.whl")
    return wheel


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    steps = Timings()
    yield steps
    print(f"\nARM64 check, seconds per step: {steps}")


@pytest.fixture(scope="module")
def arm64(tmp_path_factory, timings) -> Iterator[Device]:
    """The emulated device with the freshly built wheel installed; removed afterwards (the root stays cached)."""
    try:
        root, wheels = prepare_root(runtime_requirements(), tmp_path_factory.mktemp("aarch64-wheels"), timings)
    except Unavailable as err:
        pytest.skip(f"ARM64 emulation unavailable here: {err}")
    wheel = timings.run("build wheel", build_wheel, tmp_path_factory.mktemp("wheel"))
    device = timings.run("install on arm64", new_device, root, wheel, wheels)
    try:
        yield device
    finally:
        device.remove()


def onnx_files(metadata: BundleMetadata) -> list[str]:
    return [name for name in metadata.models if name.endswith(".onnx")]


@pytest.fixture(scope="module")
def device_bundle(exported_bundle, arm64) -> Path:
    """The export bundle as a device that was sent only its ONNX files holds it."""
    dest = arm64.host_dir / "bundle"
    dest.mkdir()
    for path in exported_bundle.iterdir():
        if path.is_file() and not path.name.endswith(".tflite"):
            shutil.copy2(path, dest / path.name)
    return dest


@pytest.fixture(scope="module")
def scans(train_dataset, arm64) -> list[Path]:
    """A few of the suite's test scans per class, copied where the device can read them."""
    dest = arm64.host_dir / "scans"
    picked = []
    for folder in sorted(p for p in (train_dataset / "Testing").iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:IMAGES_PER_CLASS]:
            target = dest / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            picked.append(target)
    return picked


def test_verify_passes_on_arm64(arm64, device_bundle, timings):
    """`tumor-edge verify` on the device: every ONNX file intact and reproducing the export machine's reference
    outputs within the per-precision tolerance."""
    metadata = BundleMetadata.read(device_bundle)
    done = timings.run("verify on arm64", arm64.cli, "verify", arm64.inside(device_bundle), timeout=CLI_TIMEOUT_S)
    print(f"\nverify on arm64 (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for name in onnx_files(metadata):
        line = re.search(rf"reproduce: ok  {re.escape(name)}: top-1 agreement (\d+)/(\d+)", done.stdout)
        assert line, f"verify did not check {name} on arm64:\n{done.stdout}"


def _classify(argv_prefix: list[str], bundle: str, name: str, scans: list[str], run) -> dict[str, dict]:
    done = run([*argv_prefix, "classify", "--json", "--model", bundle, "--model-file", name, *scans])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {"/".join(Path(row["file"]).parts[-2:]): row for row in rows if "label" in row}  # class/file


def test_classify_on_arm64_matches_x86(arm64, device_bundle, scans, timings):
    """Per ONNX file: the same label for every scan whose x86 margin leaves room (if every probability moves by at
    most the tolerance, a top-1 with a margin over twice it cannot flip), and max |Δp| within the tolerance."""
    metadata = BundleMetadata.read(device_bundle)

    def host(argv):
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)

    def device(argv):
        return arm64.run(argv, timeout=CLI_TIMEOUT_S)

    report = []
    for name in onnx_files(metadata):
        limit = DEFAULT_TOLERANCE[metadata.models[name].precision]
        x86 = timings.run(f"classify x86 {name}", _classify, [sys.executable, "-m", "tumor_edge.cli"],
                          str(device_bundle), name, [str(p) for p in scans], host)
        arm = timings.run(f"classify arm64 {name}", _classify, [f"{arm64.venv}/bin/tumor-edge"],
                          arm64.inside(device_bundle), name, [arm64.inside(p) for p in scans], device)
        assert sorted(arm) == sorted(x86) and len(x86) == len(scans), (sorted(arm), sorted(x86))
        classes = metadata.classes
        diffs, flips, near_ties = [], [], []
        for scan, want in x86.items():
            p_x86 = np.array([want["probabilities"][c] for c in classes], dtype=np.float64)
            p_arm = np.array([arm[scan]["probabilities"][c] for c in classes], dtype=np.float64)
            diffs.append(float(np.max(np.abs(p_arm - p_x86))))
            top2 = np.sort(p_x86)[-2:]
            if top2[1] - top2[0] <= 2 * limit:
                near_ties.append(scan)
            elif arm[scan]["label"] != want["label"]:
                flips.append(f"{scan}: x86 {want['label']}, arm64 {arm[scan]['label']}")
        same = sum(arm[s]["label"] == x86[s]["label"] for s in x86)
        report.append(f"{name}: labels {same}/{len(x86)} equal, max |Δp| {max(diffs):.2g} (limit {limit:g})"
                      + (f", near ties {near_ties}" if near_ties else ""))
        assert not flips, f"{name}: arm64 labels differ from x86 beyond a near tie: {flips}"
        assert max(diffs) <= limit, f"{name}: max |Δp| {max(diffs):.3g} between x86 and arm64 > {limit:g}"
    print("\nclassify, x86 vs arm64:\n" + "\n".join(report))
