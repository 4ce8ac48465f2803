"""`--trust` for the commands that load a bundle (the settings themselves: tumor_edge.signing.policy).

`enforce_trust` is what a command calls before it loads anything: the whole folder checked at rest (every file
signed and unchanged, none added), and one line saying so. The open stage then checks the signature again against
the bytes it loaded (tumor_edge.signing.verify.check_loaded): that, not this, is what binds what runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from tumor_edge.errors import ModelError
from tumor_edge.signing.policy import TrustPolicy, check_pins, parse_trust, trust_from_env


def bundle_of(model: str | Path | None) -> Path:
    """The bundle folder a model argument stands for, resolved as classify and serve resolve it (the argument,
    else $TUMOR_EDGE_MODEL, else the last export): the folder itself, or the folder holding a model file. A lone
    .onnx outside any bundle has no signature of its own, so it is refused under --trust."""
    from tumor_edge.contracts.bundle import resolve_model_path

    path = resolve_model_path(model)
    if not path.exists():
        raise ModelError("not found", path)
    return path if path.is_dir() else path.parent


def enforce_trust(model: str | Path | None, trust: str | Path | TrustPolicy, *, err: bool = True) -> TrustPolicy:
    """Refuse (SignatureError, one line) the bundle `model` resolves to unless the policy's key verifies its
    signature over every file, unchanged, none added, and its pins hold; on success print one line saying what was
    checked (stderr by default: stdout may be classify's results). Returns the policy, for the open stage
    (`BackendOptions(trust=...)`) to check the loaded bytes against."""
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.signing.verify import verify_bundle_signature

    policy = parse_trust(trust)
    bundle = bundle_of(model)
    check = verify_bundle_signature(bundle, policy.key)
    metadata = BundleMetadata.read(bundle)
    check_pins(policy, metadata, check.statement_sha256, bundle)
    release = f", release {metadata.release.version}" if metadata.release else ""
    click.echo(f"signature: ok  {len(check.files)} files signed by the trusted key {policy.key.name} (sha256 "
               f"{check.key_sha256[:16]}…){release}, bundle={check.statement_sha256}, checked in "
               f"{check.seconds:.2f} s", err=err)
    return policy


def trust_policy(model: str | Path | None, value: str | None, *, err: bool = True) -> TrustPolicy | None:
    """The trust setting of a command that loads a bundle: `--trust` else $TUMOR_EDGE_TRUST (set but empty is a
    TrustSettingError), checked at rest by `enforce_trust`; None when neither is set. The command passes the policy
    on as `BackendOptions(trust=...)` so the open stage binds it to the bytes it loads."""
    policy = parse_trust(value) if value is not None else trust_from_env()
    if policy is not None:
        enforce_trust(model, policy, err=err)
    return policy
