"""Fixtures for the signing tests: real EC keys made here, the tiny quadrant bundle (no TensorFlow), and real
model-signing. Skipped only where model-signing (the `sign` extra) is not installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("model_signing", reason="model-signing (the `sign` extra) is not installed")
pytest.importorskip("OpenSSL", reason="pyOpenSSL (the `sign` extra; model-signing imports it) is not installed")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from tests.runtime.models import make_bundle  # noqa: E402


def write_key_pair(folder: Path, name: str, curve: ec.EllipticCurve | None = None,
                   password: bytes | None = None) -> tuple[Path, Path]:
    """(private.pem, public.pem), as `openssl ecparam -genkey` / `openssl ec -pubout` would write them."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """The signer's (private.pem, public.pem): P-256."""
    return write_key_pair(tmp_path_factory.mktemp("keys"), "signer")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    """Someone else's key pair (an attacker re-signing a bundle they changed)."""
    return write_key_pair(tmp_path_factory.mktemp("other-keys"), "other")


@pytest.fixture(scope="session")
def signed_master(tmp_path_factory, keys) -> Path:
    """One signed quadrant bundle with reference outputs (so `verify` passes whole), made once; tests copy it
    (signed_bundle) before changing anything."""
    from tumor_edge.export.reference import record_reference
    from tumor_edge.signing.sign import sign_bundle

    bundle = make_bundle(tmp_path_factory.mktemp("signed") / "bundle")
    record_reference(bundle)
    sign_bundle(bundle, keys[0])
    return bundle


@pytest.fixture()
def signed_bundle(signed_master, tmp_path) -> Path:
    """A signed bundle of the test's own, to edit."""
    return Path(shutil.copytree(signed_master, tmp_path / "bundle"))


@pytest.fixture()
def unsigned_bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "unsigned")
