"""`tumor-edge env`: paste its output into a bug report."""

from __future__ import annotations

import click


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-m", "--model", metavar="BUNDLE", default=None,
              help="Bundle whose recorded engine choice to show (default: $TUMOR_EDGE_MODEL, else the last export).")
def env(as_json: bool, model: str | None) -> None:
    """Versions, CPU instruction sets, onnxruntime providers and the choice made, extras present."""
    import json

    from tumor_edge.envcmd.report import environment, format_text

    info = environment(model)
    click.echo(json.dumps(info, indent=2) if as_json else format_text(info))
