"""The `tumor-edge` command. Subcommands load lazily, so `classify` never imports the training stack.

Each subpackage owns its commands in a `commands.py` that imports only click at module level; heavy libraries
(TensorFlow, tf2onnx, matplotlib) are imported inside the command that needs them.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from tumor_edge import __version__
from tumor_edge.errors import TumorEdgeError

# command name -> "module:attribute". A registry instead of imports, so each command costs only what it uses.
COMMANDS: dict[str, str] = {
    "train": "tumor_edge.train.commands:train",
    "evaluate": "tumor_edge.train.commands:evaluate",
    "data": "tumor_edge.data.commands:data",
    "export": "tumor_edge.export.commands:export",
    "classify": "tumor_edge.runtime.commands:classify",
    "verify": "tumor_edge.runtime.verify:verify",
    "bench": "tumor_edge.bench.commands:bench",
    "demo-data": "tumor_edge.demo.commands:demo_data",
    "demo": "tumor_edge.demo.commands:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TumorEdgeError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tumor-edge")
@click.option("--debug", is_flag=True, envvar="TUMOR_EDGE_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Brain-MRI tumour classifier: train, export with proven parity, classify on CPU/edge, benchmark.

    Research tool, not a diagnostic device.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug:
        # TensorFlow's C++ start-up chatter is noise for users; --debug keeps it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if __name__ == "__main__":
    main()
