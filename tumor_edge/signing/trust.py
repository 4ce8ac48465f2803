"""`--trust PUBLIC.pem` for the commands that run a bundle (classify, serve, verify): one call before the
bundle is used. The runtime imports this module only when a trusted key is given, so an unsigned workflow never
loads model-signing."""

from __future__ import annotations

from pathlib import Path

import click

from tumor_edge.errors import ModelError
from tumor_edge.signing.verify import SignatureCheck, verify_bundle_signature


def bundle_of(model: str | Path | None) -> Path:
    """The bundle folder a model argument stands for, resolved as classify and serve resolve it (the argument,
    else $TUMOR_EDGE_MODEL, else the last export): the folder itself, or the folder holding a model file. A lone
    .onnx outside any bundle has no signature of its own, so it is refused under --trust."""
    from tumor_edge.contracts.state import resolve_model_path

    path = resolve_model_path(model)
    if not path.exists():
        raise ModelError("not found", path)
    return path if path.is_dir() else path.parent


def enforce_trust(model: str | Path | None, trust: str | Path, *, err: bool = True) -> SignatureCheck:
    """Refuse (SignatureError, one line) the bundle `model` resolves to unless `trust` verifies its signature;
    on success print one line saying what was checked (stderr by default: stdout may be classify's results)."""
    check = verify_bundle_signature(bundle_of(model), trust)
    click.echo(f"signature: ok  {len(check.files)} files signed by the trusted key {Path(trust).name} (sha256 "
               f"{check.key_sha256[:16]}…), checked in {check.seconds:.2f} s", err=err)
    return check
