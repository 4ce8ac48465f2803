"""The signing commands as a user runs them, each in a real process: `sign`, `verify --trust`, `classify --trust`
(and $TUMOR_EDGE_TRUST), `serve --trust`, `export --sign-key`, and the one-line message when the `sign` extra is
missing. Every refusal is one `error:` line naming the file, a non-zero exit and no traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.models import save_quadrant
from tests.test_cli import run_cli
from tumor_edge.signing import SIGNATURE_FILE, TRUST_ENV

REPO = Path(__file__).resolve().parents[2]


def tumor_edge(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("TUMOR_EDGE_MODEL", TRUST_ENV, "TUMOR_EDGE_DEBUG")}
    full.update(env or {})
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "tumor_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=REPO)


def error_line(run: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused run (and no traceback)."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def flip(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    return save_quadrant(tmp_path_factory.mktemp("scan") / "scan.png", 3)  # bottom-right: pituitary


def test_sign_command_signs_and_refuses_to_sign_twice(unsigned_bundle, keys):
    run = tumor_edge("sign", unsigned_bundle, "--key", keys[0])
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"signed: {unsigned_bundle / SIGNATURE_FILE} (2 files, key sha256 ")
    assert "not a diagnostic device" in run.stderr
    again = error_line(tumor_edge("sign", unsigned_bundle, "--key", keys[0]))
    assert again.startswith(f"error: {unsigned_bundle / SIGNATURE_FILE}: the bundle is signed already; pass --force")
    assert tumor_edge("sign", unsigned_bundle, "--key", keys[0], "--force").returncode == 0


def test_verify_trust_passes_a_signed_bundle_and_checks_the_signature_first(signed_bundle, keys):
    run = tumor_edge("verify", signed_bundle, "--trust", keys[1])
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("signature: ok  2 files signed by the trusted key signer.pub.pem (sha256 ")
    assert lines[-1] == f"verify: {signed_bundle}: all checks passed on this device (1 model file checked)"


@pytest.mark.parametrize("name", ["metadata.json", "model_fp32.onnx", SIGNATURE_FILE])
def test_verify_and_classify_trust_refuse_an_edited_byte_naming_the_file(signed_bundle, keys, scan, name):
    flip(signed_bundle / name, (signed_bundle / name).stat().st_size // 2)
    verify = error_line(tumor_edge("verify", signed_bundle, "--trust", keys[1]))
    assert verify.startswith(f"error: {signed_bundle / name}: ")
    classify = tumor_edge("classify", scan, "-m", signed_bundle, "--trust", keys[1], "--json")
    assert error_line(classify) == verify
    assert classify.stdout == ""  # no result from a bundle that failed its signature


def test_classify_trust_from_the_environment_and_for_a_file_in_the_bundle(signed_bundle, keys, scan):
    run = tumor_edge("classify", scan, "-m", signed_bundle / "model_fp32.onnx", "--json",
                     env={TRUST_ENV: str(keys[1])})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["label"] == "pituitary"
    assert "signature: ok  2 files" in run.stderr
    (signed_bundle / "model_fp32.ort.onnx").write_bytes(b"an unlisted file added after signing")
    refused = error_line(tumor_edge("classify", scan, "-m", signed_bundle, env={TRUST_ENV: str(keys[1])}))
    assert refused == (f"error: {signed_bundle / 'model_fp32.ort.onnx'}: signature check failed: not part of the "
                       "signed bundle (added after signing)")


def test_classify_trust_refuses_an_unsigned_bundle(unsigned_bundle, keys, scan):
    line = error_line(tumor_edge("classify", scan, "-m", unsigned_bundle, "--trust", keys[1]))
    assert line == f"error: {unsigned_bundle}: not signed: the bundle has no {SIGNATURE_FILE} (sign it with " \
                   "`tumor-edge sign BUNDLE --key PRIVATE.pem`)"
    assert tumor_edge("classify", scan, "-m", unsigned_bundle).returncode == 0  # without --trust: as before


def test_classify_trust_refuses_another_signer(signed_bundle, other_keys, scan):
    line = error_line(tumor_edge("classify", scan, "-m", signed_bundle, "--trust", other_keys[1]))
    assert line.startswith(f"error: {signed_bundle / SIGNATURE_FILE}: signed with another key than the trusted ")


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="the serve extra is not installed")
def test_serve_trust_starts_with_a_signed_bundle(signed_bundle, keys, tmp_path):
    import urllib.request

    from tests.serve.process import running_server

    with running_server(tmp_path / "serve", "-m", str(signed_bundle), env={TRUST_ENV: str(keys[1])}) as server:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=30) as response:
            assert response.status == 200
        assert "signature: ok  2 files" in server.stderr()


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="the serve extra is not installed")
def test_serve_trust_refuses_before_the_port_opens(signed_bundle, keys):
    flip(signed_bundle / "model_fp32.onnx", 500)
    run = tumor_edge("serve", "-m", signed_bundle, "--port", "0", "--trust", keys[1], timeout=60)
    assert error_line(run).startswith(f"error: {signed_bundle / 'model_fp32.onnx'}: signature check failed: changed")
    assert "http://" not in run.stdout + run.stderr


@pytest.mark.parametrize("blocked", ["model_signing", "OpenSSL"])
def test_a_missing_sign_extra_is_one_line(signed_bundle, keys, blocked):
    run = run_cli("verify", str(signed_bundle), "--trust", str(keys[1]), blocked=blocked)
    assert error_line(run) == (f"error: signed bundles need the `sign` extra ({blocked} is not installed): "
                               "pip install 'tumor-edge[sign]'")
    run = run_cli("sign", str(signed_bundle), "--key", str(keys[0]), blocked=blocked)
    assert error_line(run).endswith("pip install 'tumor-edge[sign]'")


def test_export_checks_its_signing_key_before_converting(tmp_path):
    """A key that cannot sign fails in the first second, not after the conversions."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    run = tumor_edge("export", tmp_path / "no-model.onnx", "--out", tmp_path / "out", "--sign-key", junk)
    assert error_line(run) == f"error: {junk}: not a PEM private key; signing needs an EC key on P-256, P-384 or " \
                              "P-521, e.g. `openssl ecparam -name prime256v1 -genkey -noout`"


@pytest.mark.slow  # exports
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("tensorflow", "tf2onnx", "onnx")),
                    reason="export needs the `train` extra")
def test_export_sign_key_signs_the_finished_bundle(tmp_path, keys, scan):
    """A real export (the quadrant ONNX model as a model made elsewhere, no parity: ~10 s) signs last: the
    signature covers the model card and metadata written after the models, and the bundle passes verify --trust."""
    import onnx

    from tests.runtime.models import quadrant_model

    onnx.save(quadrant_model(32), tmp_path / "quadrant.onnx")
    out = tmp_path / "bundle"
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    run = tumor_edge("export", tmp_path / "quadrant.onnx", "--out", out, "--classes",
                     "glioma,meningioma,notumor,pituitary", "--formats", "onnx", "--no-parity", "--preprocess", "none",
                     "--quiet", "--sign-key", keys[0], env=state, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"signed: {out / SIGNATURE_FILE}"
    verify = tumor_edge("verify", out, "--trust", keys[1], env=state)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("signature: ok  3 files")  # metadata.json, MODEL_CARD.md, model_fp32.onnx
    (out / "MODEL_CARD.md").write_text("a card rewritten after signing")
    assert error_line(tumor_edge("classify", scan, "-m", out, "--trust", keys[1], env=state)).startswith(
        f"error: {out / 'MODEL_CARD.md'}: signature check failed: changed since the bundle was signed")
