"""The ARM64 device check: the wheel, installed with the aarch64 wheels of its runtime dependencies in a Debian arm64
root under qemu-user (tests/runtime/arm64_root.py), verifies the bundle the suite exported and classifies scans as
x86 does, within verify's per-precision tolerances.

The device flow is the README's: `pip install tumor-edge` (no extras), then `tumor-edge verify BUNDLE` on the whole
export bundle, whose TFLite files that install cannot run (listed as not checked here). LiteRT's aarch64 wheel is
tried last, in its own test, which skips when it does not install. The emulated core is a Neoverse N1 (Graviton2;
half-precision arithmetic like a Raspberry Pi 5's Cortex-A76), $TUMOR_EDGE_ARM64_CPU picks another. The emulator
runs the models about 30x slower than this CPU would, so the checks run each file once. Every step's seconds and
the observed x86/ARM64 differences are printed (pytest -rP or -s shows them).

Skips (with the reason) where the emulator cannot be set up: not root, no qemu-user-static/debootstrap, no
binfmt_misc, Debian mirror or package registry unreachable. A wheel that does not install in the root, a verify
that fails there or outputs that differ beyond tolerance fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.arm64_root import Device, Timings, Unavailable, download_wheels, new_device, prepare_root
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.runtime.choice import tolerance_for

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="tomllib (Python 3.11+) or tomli is needed to read pyproject")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGES_PER_CLASS = 2  # 8 scans: enough to compare labels and probabilities, cheap under the emulator
CLI_TIMEOUT_S = 900


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
    """The emulated device with the freshly built wheel installed as `pip install tumor-edge` would (pyproject's
    runtime dependencies, no extras); removed afterwards (the root stays cached)."""
    try:
        root, wheels = prepare_root(PYPROJECT["project"]["dependencies"], tmp_path_factory.mktemp("aarch64"),
                                    timings)
    except Unavailable as err:
        pytest.skip(f"ARM64 emulation unavailable here: {err}")
    wheel = timings.run("build wheel", build_wheel, tmp_path_factory.mktemp("wheel"))
    device = timings.run("install on arm64", new_device, root, wheel, wheels)
    print(f"\nARM64 device: Debian root {root.name}, emulated CPU {device.cpu} (qemu-user)")
    try:
        yield device
    finally:
        device.remove()


def copy_bundle(bundle: Path, dest: Path, keep) -> Path:
    dest.mkdir(parents=True)
    for path in bundle.iterdir():
        if path.is_file() and keep(path.name):
            shutil.copy2(path, dest / path.name)
    return dest


@pytest.fixture(scope="module")
def device_bundle(exported_bundle, arm64) -> Path:
    """The whole export bundle, copied onto the device."""
    return copy_bundle(exported_bundle, arm64.host_dir / "bundle", lambda name: True)


@pytest.fixture(scope="module")
def scans(train_dataset, arm64) -> list[Path]:
    """A few of the suite's test scans per class, copied where the device can read them."""
    picked = []
    for folder in sorted(p for p in (train_dataset / "Testing").iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:IMAGES_PER_CLASS]:
            target = arm64.host_dir / "scans" / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            picked.append(target)
    return picked


def files_of(bundle: Path, suffix: str) -> list[str]:
    return [name for name in BundleMetadata.read(bundle).models if name.endswith(suffix)]


def device_verify(arm64: Device, bundle: Path, timings: Timings, step: str) -> subprocess.CompletedProcess:
    done = timings.run(step, arm64.cli, "verify", arm64.inside(bundle), timeout=CLI_TIMEOUT_S)
    print(f"\n{step}, emulated {arm64.cpu} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def test_verify_passes_on_arm64(arm64, device_bundle, timings):
    """README step 4 on ARM64: `tumor-edge verify` on the whole export bundle passes; every ONNX file is intact and
    reproduces the export machine's reference outputs within the per-precision tolerance; every TFLite file is
    hashed and listed once as not checked here (this install has no LiteRT)."""
    done = device_verify(arm64, device_bundle, timings, "verify on arm64")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in files_of(device_bundle, ".onnx"):
        assert f"reproduce: ok  {name}: top-1 agreement" in done.stdout, f"{name} not reproduced:\n{done.stdout}"
    for name in files_of(device_bundle, ".tflite"):
        assert f"integrity: ok  {name}" in done.stdout
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"not checked here: {name}:")]
        assert len(lines) == 1 and "tumor-edge[tflite]" in lines[0], done.stdout


def classify(argv: list[str], bundle: str, name: str, scans: list[str], run) -> dict[str, dict]:
    """`classify --json` of one model file: class/file -> its JSON row."""
    done = run([*argv, "classify", "--json", "--model", bundle, "--model-file", name, *scans])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {"/".join(Path(row["file"]).parts[-2:]): row for row in rows if "label" in row}


def compare(metadata: BundleMetadata, name: str, x86: dict[str, dict], arm: dict[str, dict]) -> tuple[str, list[str]]:
    """ARM64 against x86 per scan, within the file's tolerance: (the observed figures, the problems found).
    A label is compared where x86's top-2 margin exceeds twice the tolerance: if no probability moves by more
    than the tolerance, such a label cannot flip, while a nearer tie may legitimately go either way."""
    limit = tolerance_for(name, metadata)
    assert sorted(arm) == sorted(x86), (sorted(arm), sorted(x86))
    diffs, problems, ties = [], [], []
    for scan, want in x86.items():
        p_x86 = np.array([want["probabilities"][c] for c in metadata.classes], dtype=np.float64)
        p_arm = np.array([arm[scan]["probabilities"][c] for c in metadata.classes], dtype=np.float64)
        diffs.append(float(np.max(np.abs(p_arm - p_x86))))
        top2 = np.sort(p_x86)[-2:]
        if top2[1] - top2[0] <= 2 * limit:
            ties.append(scan)
        elif arm[scan]["label"] != want["label"]:
            problems.append(f"{name}: {scan} is {arm[scan]['label']} on arm64, {want['label']} on x86")
    if max(diffs) > limit:
        problems.append(f"{name}: max |Δp| {max(diffs):.3g} between x86 and arm64 > {limit:g}")
    same = sum(arm[s]["label"] == x86[s]["label"] for s in x86)
    line = (f"{name}: labels {same}/{len(x86)} equal, max |Δp| {max(diffs):.2g} (limit {limit:g})"
            + (f"; near ties (labels not compared): {ties}" if ties else ""))
    return line, problems


def test_classify_on_arm64_matches_x86(arm64, device_bundle, scans, timings):
    """Per ONNX file, `classify --json` on the suite's test scans: ARM64's labels and probabilities are x86's
    (this process's machine) within verify's tolerance for the file's precision. Every file is compared before
    the test fails, so a failure shows all of them."""
    metadata = BundleMetadata.read(device_bundle)
    report, problems = [], []
    for name in files_of(device_bundle, ".onnx"):
        x86 = timings.run(f"classify x86 {name}", classify, [sys.executable, "-m", "tumor_edge.cli"],
                          str(device_bundle), name, [str(p) for p in scans],
                          lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S))
        arm = timings.run(f"classify arm64 {name}", classify, [f"{arm64.venv}/bin/tumor-edge"],
                          arm64.inside(device_bundle), name, [arm64.inside(p) for p in scans],
                          lambda argv: arm64.run(argv, timeout=CLI_TIMEOUT_S))
        assert len(x86) == len(scans), x86
        line, found = compare(metadata, name, x86, arm)
        report.append(line)
        problems += found
    print(f"\nclassify, x86 vs arm64 ({len(scans)} scans):\n" + "\n".join(report))
    assert not problems, "\n".join(problems + [f"observed (emulated {arm64.cpu}):"] + report)


def install_extra(arm64: Device, extra: str, tmp_path_factory, timings: Timings) -> None:
    """An extra's aarch64 wheels, downloaded on the host and installed in the device's venv; skips the calling
    test (with the reason) when they cannot be had or do not install."""
    requirements = list(PYPROJECT["project"]["optional-dependencies"][extra])
    try:
        wheels = timings.run(f"download {extra} extra", download_wheels, requirements,
                             tmp_path_factory.mktemp(extra), *arm64.interpreter)
    except Unavailable as err:
        pytest.skip(f"no aarch64 wheels for the {extra} extra: {err}")
    for path in wheels:
        shutil.copy2(path, arm64.host_dir / "wheels" / path.name)
    installed = timings.run(f"install {extra} extra on arm64", arm64.pip_install, *requirements)
    if installed.returncode != 0:
        pytest.skip(f"the {extra} extra does not install on arm64: {installed.stderr.strip()[-500:]}")


def test_litert_on_arm64(arm64, exported_bundle, tmp_path_factory, timings):
    """Optional: the `tflite` extra's aarch64 wheel (ai-edge-litert) in the device's venv, then verify on a copy
    that holds the TFLite files only (the ONNX ones are checked above). Skips when no aarch64 wheel installs."""
    install_extra(arm64, "tflite", tmp_path_factory, timings)
    version = arm64.run([f"{arm64.venv}/bin/python", "-c", "from importlib.metadata import version; "
                         "print(version('ai-edge-litert'))"]).stdout.strip()
    print(f"\nai-edge-litert {version} installed on arm64")
    tflite_only = copy_bundle(exported_bundle, arm64.host_dir / "bundle-tflite", lambda n: not n.endswith(".onnx"))
    done = device_verify(arm64, tflite_only, timings, "verify TFLite on arm64")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in files_of(tflite_only, ".tflite"):
        assert f"reproduce: ok  {name}: top-1 agreement" in done.stdout, f"{name} not reproduced:\n{done.stdout}"


def test_signed_bundle_on_arm64(arm64, exported_bundle, scans, tmp_path_factory, timings):
    """Issue 22: a signed export bundle passes the signature check under --trust on the device (the `sign` extra's
    aarch64 wheels): `classify --trust` of its int8 file labels a scan (test_verify_passes_on_arm64 has already
    reproduced every file; the signature check is the same code in verify and classify), and a changed byte in a
    signed file fails `verify --trust` with one line naming it. Skips when the extra does not install."""
    pytest.importorskip("model_signing", reason="model-signing (the `sign` extra) signs the bundle on the host")
    from tests.signing.conftest import write_key_pair
    from tumor_edge.signing.sign import sign_bundle

    install_extra(arm64, "sign", tmp_path_factory, timings)
    private, public = write_key_pair(arm64.host_dir / "keys", "signer")
    # The whole bundle: a signature covers every file, so a device is sent all of them (it checks the hashes of
    # the TFLite files it cannot run)
    signed = copy_bundle(exported_bundle, arm64.host_dir / "bundle-signed", lambda name: True)
    sign_bundle(signed, private)
    done = timings.run("classify --trust on arm64", arm64.cli, "classify", "--json", "--trust",
                       arm64.inside(public), "--model", arm64.inside(signed), "--model-file", "model_int8.onnx",
                       arm64.inside(scans[0]), timeout=CLI_TIMEOUT_S)
    print(f"\nclassify --trust on arm64 (exit {done.returncode}):\n{done.stdout[:300]}\n{done.stderr}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[0])["model_file"] == "model_int8.onnx"
    data = bytearray((signed / "metadata.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (signed / "metadata.json").write_bytes(bytes(data))
    refused = timings.run("verify --trust, changed, on arm64", arm64.cli, "verify", "--trust",
                          arm64.inside(public), arm64.inside(signed), timeout=CLI_TIMEOUT_S)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert len(errors) == 1 and "metadata.json" in errors[0], refused.stderr
