"""Reading the keys a user names, so a wrong or unreadable key is one line naming the key file before any
signing or hashing starts (model-signing itself reports "Unable to load PEM file" or a bare FileNotFoundError).

model-signing signs with elliptic-curve keys on the curves Sigstore specifies: P-256, P-384, P-521. Make a pair
with `openssl ecparam -name prime256v1 -genkey -noout -out private.pem` and
`openssl ec -in private.pem -pubout -out public.pem`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.errors import ConfigError
from tumor_edge.signing import KEY_PASSWORD_ENV, TrustSettingError

SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
MAX_KEY_BYTES = 1 << 16  # a PEM key is a few hundred bytes; anything far larger is not one
KEY_HINT = "an EC key on P-256, P-384 or P-521, e.g. `openssl ecparam -name prime256v1 -genkey -noout`"


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
    import hashlib

    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()

