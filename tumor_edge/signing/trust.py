"""Trust settings, and `--trust` for the commands that load a bundle.

A setting is `PUBLIC.pem`, optionally followed by pins: `PUBLIC.pem,min-version=2026-12-07T00:00:00Z` refuses a
bundle exported before that time (an older bundle signed with the same key is not a way back to its flaws),
`PUBLIC.pem,bundle=SHA256` accepts one signed bundle only (the sha256 of its signed statement, printed by every
check). `--trust` gives one; $TUMOR_EDGE_TRUST gives it to every command that loads a bundle (the open stage reads
it when no setting is passed), and set but empty it is an error, never "off".

`enforce_trust` is what a command calls before it loads anything: the whole folder checked at rest (every file
signed and unchanged, none added), and one line saying so. The open stage then checks the signature again against
the bytes it loaded (`check_loaded`): that, not this, is what binds what runs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tumor_edge.contracts.bundle import (
    METADATA_FILE,
    BundleMetadata,
    is_sha256,
    parse_release_version,
    read_confined,
    resolve_model_path,
)
from tumor_edge.errors import ConfigError, ModelError, first_line
from tumor_edge.signing import SIGNATURE_FILE, TRUST_ENV, SignatureError, TrustSettingError, verify
from tumor_edge.signing.sign import bundle_files, load_public_key

PINS = ("min-version", "bundle")


@dataclass(frozen=True)
class TrustPolicy:
    """The signer's public key, and the pins a signed bundle must also meet."""

    key: Path
    min_version: str | None = None  # release.version at least this (a UTC time, contracts.bundle)
    bundle: str | None = None  # the sha256 of the signed statement, exactly


def parse_trust(value: str | Path | TrustPolicy) -> TrustPolicy:
    """A trust setting (`PUBLIC.pem[,min-version=TIME][,bundle=SHA256]`) as a TrustPolicy; TrustSettingError
    naming what is wrong."""
    if isinstance(value, TrustPolicy):
        return value
    text = str(value)
    if not text.strip():
        raise TrustSettingError("the trust setting is empty: name a public key (PUBLIC.pem)")
    key, *pins = text.split(",")
    found: dict[str, str] = {}
    for pin in pins:
        name, _, pinned = pin.partition("=")
        if name not in PINS or not pinned:
            raise TrustSettingError(f"unknown trust pin {pin[:40]!r}: pins are {', '.join(p + '=...' for p in PINS)}")
        found[name] = pinned.strip()
    if "min-version" in found:
        try:
            parse_release_version(found["min-version"], "min-version")
        except ConfigError as err:
            raise TrustSettingError(f"trust pin {err.reason}") from err
    digest = found.get("bundle")
    if digest is not None and not is_sha256(digest):
        raise TrustSettingError("trust pin bundle= must be 64 hexadecimal digits (a signed statement's sha256)")
    return TrustPolicy(Path(key), found.get("min-version"), digest.lower() if digest else None)


def trust_from_env() -> TrustPolicy | None:
    """$TUMOR_EDGE_TRUST as a policy; None when it is not set. Set but empty is a TrustSettingError: an empty
    value must not silently turn checking off."""
    value = os.environ.get(TRUST_ENV)
    if value is None:
        return None
    if not value.strip():
        raise TrustSettingError(f"${TRUST_ENV} is set but empty: name a public key, or unset it")
    return parse_trust(value)


def check_pins(policy: TrustPolicy, metadata: Any, statement_sha256: str, where: Path) -> None:
    """Refuse (SignatureError) a signed bundle that its policy's pins exclude. `metadata` must be the record the
    signature covers."""
    if policy.bundle and statement_sha256 != policy.bundle:
        raise SignatureError(f"signed, but not the pinned bundle (its statement's sha256 is {statement_sha256[:16]}…, "
                             f"the pin {policy.bundle[:16]}…)", where)
    if policy.min_version:
        release = getattr(metadata, "release", None)
        if release is None:
            raise SignatureError("carries no release version, so it cannot be shown to be at least "
                                 f"{policy.min_version} (re-export and sign it)", where)
        if parse_release_version(release.version) < parse_release_version(policy.min_version, "min-version"):
            raise SignatureError(f"release {release.version} is older than the pinned minimum {policy.min_version} "
                                 "(a rollback to an earlier signed bundle)", where)


def bundle_of(model: str | Path | None) -> Path:
    """The bundle folder a model argument stands for, resolved as classify and serve resolve it (the argument,
    else $TUMOR_EDGE_MODEL, else the last export): the folder itself, or the folder holding a model file. A lone
    .onnx outside any bundle has no signature of its own, so it is refused under --trust."""
    path = resolve_model_path(model)
    if not path.exists():
        raise ModelError("not found", path)
    return path if path.is_dir() else path.parent


def enforce_trust(model: str | Path | None, trust: str | Path | TrustPolicy, *, err: bool = True) -> None:
    """Refuse (SignatureError, one line) the bundle `model` resolves to unless the policy's key verifies its
    signature over every file, unchanged, none added, and its pins hold; on success print one line saying what was
    checked (stderr by default: stdout may be classify's results)."""
    policy = parse_trust(trust)
    bundle = bundle_of(model)
    check = verify.verify_bundle_signature(bundle, policy.key)
    metadata = BundleMetadata.read(bundle)
    check_pins(policy, metadata, check.statement_sha256, bundle)
    release = f", release {metadata.release.version}" if metadata.release else ""
    click.echo(f"signature: ok  {len(check.files)} files signed by the trusted key {policy.key.name} (sha256 "
               f"{check.key_sha256[:16]}…){release}, bundle={check.statement_sha256}, checked in "
               f"{check.seconds:.2f} s", err=err)


def trust_policy(model: str | Path | None, value: str | None, *, err: bool = True) -> TrustPolicy | None:
    """The trust setting of a command that loads a bundle: `--trust` else $TUMOR_EDGE_TRUST, checked at rest by
    `enforce_trust`; None when neither is set."""
    policy = parse_trust(value) if value is not None else trust_from_env()
    if policy is not None:
        enforce_trust(model, policy, err=err)
    return policy


def check_loaded(bundle: Path, trust: Any, metadata: Any, digests: dict[str, str]) -> None:
    """Refuse (SignatureError, one line naming the file) unless the bundle's signature, read once here and
    checked with the trusted key, covers exactly the bytes the caller loaded: `digests` (file name -> sha256 of
    the bytes handed to the engine) and `metadata.sha256` (of the metadata.json bytes the record was parsed from).
    The folder's names must be the signed ones (nothing added, nothing missing); the trust setting's pins must hold.
    What the folder holds at another moment does not matter: these bytes are what runs."""
    policy = parse_trust(trust)
    bundle = Path(bundle)
    key = load_public_key(policy.key)
    signature = bundle / SIGNATURE_FILE
    try:
        raw = read_confined(bundle, SIGNATURE_FILE, verify.MAX_SIGNATURE_BYTES)
    except FileNotFoundError as err:
        raise verify.not_signed(bundle) from err
    except (OSError, ModelError) as err:
        raise SignatureError(f"cannot be read ({first_line(err)})", signature) from err
    signed, payload = verify.authentic_statement(raw, key, policy.key, signature)
    loaded = {METADATA_FILE: metadata.sha256, **digests}
    for name, digest in loaded.items():
        if name not in signed:
            raise SignatureError("not part of the signed bundle; refusing to run it", bundle / name)
        if not digest or digest != signed[name]:
            raise SignatureError("the bytes loaded are not the signed ones (changed since the bundle was signed, "
                                 "or while it was read); refusing to run it", bundle / name)
    present = set(bundle_files(bundle))
    for name in sorted(present ^ set(signed)):
        why = "not part of the signed bundle (added after signing)" if name in present else \
            "signed, but missing from the bundle"
        raise SignatureError(f"signature check failed: {why}", bundle / name)
    check_pins(policy, metadata, hashlib.sha256(payload).hexdigest(), bundle)
