"""`sign_bundle`: sign every file of a bundle with a private key, writing BUNDLE/model.sig.

A bundle is signed only when it is what its metadata says (every listed model present with its recorded size and
sha256): a signature vouches for a bundle, so it is refused for one that is already broken. The signature is
written under a temporary name and renamed, so an interrupted run leaves no half-written model.sig, and an
existing signature is replaced only with `force`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tumor_edge.contracts.bundle import BundleMetadata, check_model_file
from tumor_edge.errors import ModelError, OutputExistsError
from tumor_edge.signing import KEY_PASSWORD_ENV, SIGNATURE_FILE
from tumor_edge.signing.library import bundle_files, fingerprint, hashing_config, load_private_key, model_signing

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class SignResult:
    signature: Path
    key_sha256: str  # the signer's public key, as model-signing records it in the signature
    seconds: float
    files: list[str] = field(default_factory=list)  # what the signature covers, relative to the bundle


def check_signing_key(private_key: str | Path, password: str | None = None) -> None:
    """The library is installed and the key can sign: what `export --sign-key` checks before it converts."""
    model_signing()
    load_private_key(private_key, password)


def check_bundle(bundle: Path) -> None:
    """The bundle reads and every model it lists is the file its metadata describes (one-line error if not)."""
    metadata = BundleMetadata.read(bundle)
    if not metadata.models:
        raise ModelError("the bundle lists no models: nothing to sign", bundle)
    for name in metadata.models:
        check_model_file(bundle, name, metadata)


def sign_bundle(bundle: str | Path, private_key: str | Path, *, force: bool = False,
                password: str | None = None) -> SignResult:
    """Sign every file under `bundle` (metadata.json included; everything but model.sig) with the EC private key
    at `private_key` (PEM; its password from `password` or $TUMOR_EDGE_SIGN_PASSWORD)."""
    library = model_signing()
    bundle, private_key = Path(bundle), Path(private_key)
    if not bundle.is_dir():
        raise ModelError("not a bundle folder" if bundle.exists() else "bundle folder not found", bundle)
    password = password if password is not None else os.environ.get(KEY_PASSWORD_ENV) or None
    key = load_private_key(private_key, password)
    signature = bundle / SIGNATURE_FILE
    if (signature.exists() or signature.is_symlink()) and not force:
        raise OutputExistsError("the bundle is signed already; pass --force (force=True in Python) to sign it "
                                "again, replacing this signature", signature)
    partial = bundle / f".{SIGNATURE_FILE}{PARTIAL_SUFFIX}"
    partial.unlink(missing_ok=True)  # a crashed run's leftover would otherwise be signed as a bundle file
    if signature.is_symlink() or (signature.exists() and not signature.is_file()):
        raise ModelError(f"{SIGNATURE_FILE} is not a regular file; remove it first", signature)
    check_bundle(bundle)
    files = bundle_files(bundle)
    started = time.perf_counter()
    config = library.signing.Config().use_elliptic_key_signer(
        # cryptography wants the password as bytes (model-signing passes it through unchanged)
        private_key=private_key, password=password.encode() if password else None)
    try:
        # hashes first, then writes the signature: the partial file does not exist while the bundle is hashed
        config.set_hashing_config(hashing_config()).sign(bundle, partial)
        os.replace(partial, signature)
    except OSError as err:
        raise ModelError(f"cannot write the signature ({err.strerror or err})", signature) from err
    finally:
        partial.unlink(missing_ok=True)
    return SignResult(signature, fingerprint(key.public_key()), time.perf_counter() - started, files)
