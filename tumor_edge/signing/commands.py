"""`tumor-edge sign BUNDLE --key PRIVATE.pem`. Only click is imported at module level."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, metavar="PRIVATE.pem", type=click.Path(path_type=Path),
              help="EC private key (P-256, P-384 or P-521; PEM). Encrypted: its password in "
                   "$TUMOR_EDGE_SIGN_PASSWORD.")
@click.option("--force", is_flag=True, help="Replace the bundle's existing signature.")
def sign(bundle: Path, key: Path, force: bool) -> None:
    """Sign every file of BUNDLE (metadata.json included) with KEY, writing BUNDLE/model.sig.

    The OpenSSF model-signing format, offline, no transparency log. `tumor-edge verify BUNDLE --trust
    PUBLIC.pem`, and classify/serve with --trust (or $TUMOR_EDGE_TRUST), then refuse the bundle if any file is
    changed, added or removed. Needs the `sign` extra. Research tool, not a diagnostic device.
    """
    from tumor_edge import RESEARCH_NOTICE
    from tumor_edge.signing.sign import sign_bundle

    result = sign_bundle(bundle, key, force=force)
    click.echo(f"note: {RESEARCH_NOTICE}", err=True)
    click.echo(f"signed: {result.signature} ({len(result.files)} files, key sha256 {result.key_sha256[:16]}…, "
               f"{result.seconds:.2f} s)")
    click.echo(f"check it on a device with: tumor-edge verify {bundle} --trust PUBLIC.pem")
