"""Signing a bundle (`sign_bundle`: every file signed with a private key, into BUNDLE/model.sig), and what signing
and verifying share: the model-signing library, loaded on first use, and its one hashing configuration; the
files a signature covers; the keys a user names.

A bundle is signed only when it is what its metadata says (every listed model present with its recorded size and
sha256): a signature vouches for a bundle, so it is refused for one that is already broken. The signature is
written under a temporary name and renamed, so an interrupted run leaves no half-written model.sig, and an
existing signature is replaced only with `force`.

Only model-signing's documented, stable modules are used (`model_signing.hashing`, `.signing`, `.verifying`).
The files are listed before model-signing runs so that a symlink or a special file is one line naming it
(model-signing would refuse a symlink with its own wording, and skip a FIFO silently). Keys are read here so that
a wrong or unreadable key is one line naming the key file before any signing or hashing starts (model-signing
itself reports "Unable to load PEM file" or a bare FileNotFoundError).

model-signing signs with elliptic-curve keys on the curves Sigstore specifies: P-256, P-384, P-521. Make a pair
with `openssl ecparam -name prime256v1 -genkey -noout -out private.pem` and
`openssl ec -in private.pem -pubout -out public.pem`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tumor_edge.contracts.bundle import BundleMetadata, read_model_files
from tumor_edge.errors import ConfigError, MissingExtraError, ModelError, OutputExistsError
from tumor_edge.signing import EXTRA, KEY_PASSWORD_ENV, SIGNATURE_FILE, SignatureError, TrustSettingError

SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
MAX_KEY_BYTES = 1 << 16  # a PEM key is a few hundred bytes; anything far larger is not one
KEY_HINT = "an EC key on P-256, P-384 or P-521, e.g. `openssl ecparam -name prime256v1 -genkey -noout`"


def model_signing() -> ModuleType:
    """The library, or a one-line MissingExtraError naming the extra. pyOpenSSL is checked too: model-signing
    imports it (for certificate signing) without declaring it, so a plain `pip install model-signing` fails on
    first use."""
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
        import OpenSSL  # noqa: F401
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"signed bundles need the `{EXTRA}` extra ({err.name} is not installed): "
                                f"pip install 'tumor-edge[{EXTRA}]'") from err
    return model_signing


def hashing_config():
    """sha256 of every file, one entry per file, no symlinks, nothing ignored but the signature itself: git's
    files (which model-signing skips by default) are signed like any other, so a `.gitignore` dropped into a
    signed bundle fails verification as every other added file does."""
    library = model_signing()
    return (library.hashing.Config()
            .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False))


def bundle_files(bundle: Path) -> list[str]:
    """Every file's path relative to `bundle` ("/"-separated, as model-signing names them), sorted; raises
    SignatureError for a symlink or anything that is neither a regular file nor a folder."""
    found = []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SignatureError("a symbolic link: a signed bundle holds plain files only", path)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SignatureError("not a regular file (a FIFO, socket or device): a signed bundle holds plain "
                                     "files only", path)
            if stat.S_ISREG(mode):
                found.append(path.relative_to(bundle).as_posix())
    return sorted(name for name in found if name != SIGNATURE_FILE)


def _pem_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{what} not found" if not path.exists() else f"{what} is not a file", path)
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise ConfigError(f"{what} is larger than {MAX_KEY_BYTES >> 10} KiB: not a PEM key", path)
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} cannot be read ({err.strerror or err})", path) from err


def _check_curve(key, path: Path, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{what} is a {type(public).__name__.lstrip('_')}; signing needs {KEY_HINT}", path)
    if public.curve.name not in SUPPORTED_CURVES:
        raise ConfigError(f"{what} is on curve {public.curve.name}; signing needs {KEY_HINT}", path)


def load_private_key(path: str | Path, password: str | None = None):
    """The private key at `path` (PEM), checked to be one model-signing signs with. The password, if the key is
    encrypted, comes from the argument or $TUMOR_EDGE_SIGN_PASSWORD."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    data = _pem_bytes(path, "private key")
    if password is None:
        password = os.environ.get(KEY_PASSWORD_ENV) or None
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError as err:  # encrypted without a password, or a password for a plain key
        needed = "is encrypted: set $" + KEY_PASSWORD_ENV if password is None else "is not encrypted: unset $" + \
            KEY_PASSWORD_ENV
        raise ConfigError(f"private key {needed}", path) from err
    except ValueError as err:
        if password is not None and b"ENCRYPTED" in data:
            raise ConfigError(f"private key: wrong password (${KEY_PASSWORD_ENV})", path) from err
        raise ConfigError(f"not a PEM private key; signing needs {KEY_HINT}", path) from err
    _check_curve(key, path, "private key")
    return key


def load_public_key(path: str | Path):
    """The public key at `path` (PEM, SubjectPublicKeyInfo), checked to be one model-signing verifies with; a
    TrustSettingError (one line naming the key file) when it is not."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        data = _pem_bytes(path, "public key")
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as err:
            hint = " (this is a private key: give the public half, `openssl ec -in KEY -pubout`)" \
                if b"PRIVATE KEY" in data else ""
            raise ConfigError(f"not a PEM public key{hint}", path) from err
        _check_curve(key, path, "public key")
    except ConfigError as err:
        raise TrustSettingError(err.reason, err.path) from err
    return key


def fingerprint(public_key) -> str:
    """sha256 of the PEM SubjectPublicKeyInfo: the identifier model-signing records in a signature (its "hint"),
    so the same short form names a key in our output and in the signature file."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


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
    metadata = BundleMetadata.read(bundle)  # and every model it lists is the file it describes
    if not metadata.models:
        raise ModelError("the bundle lists no models: nothing to sign", bundle)
    for name in metadata.models:
        read_model_files(bundle, name, metadata)
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
