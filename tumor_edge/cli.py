"""The `tumor-edge` command. Subcommands load lazily, so `classify` never imports the training stack.

Each subpackage owns its commands in a `commands.py`; heavy libraries (TensorFlow, tf2onnx, matplotlib) are
imported inside the command that needs them.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import os
import sys
import warnings

import click

from tumor_edge import __version__
from tumor_edge.envcmd.extras import COMMAND_NEEDS, extra_for, missing_for
from tumor_edge.errors import MissingExtraError, TumorEdgeError

# command name -> "module:attribute". A registry instead of imports, so each command costs only what it uses.
COMMANDS: dict[str, str] = {
    "train": "tumor_edge.train.commands:train",
    "evaluate": "tumor_edge.train.commands:evaluate",
    "data": "tumor_edge.data.commands:data",
    "export": "tumor_edge.export.commands:export",
    "classify": "tumor_edge.runtime.commands:classify",
    "batch": "tumor_edge.batch.commands:batch",
    "verify": "tumor_edge.runtime.commands:verify",
    "bench": "tumor_edge.bench.commands:bench",
    "demo-data": "tumor_edge.demo.commands:demo_data",
    "demo": "tumor_edge.demo.commands:demo",
    "serve": "tumor_edge.serve.commands:serve",
    "sign": "tumor_edge.signing.commands:sign",
    "env": "tumor_edge.envcmd.commands:env",
}

# command -> environment defaults applied before its module loads (a value the user set wins). classify's numpy
# work is elementwise: OpenBLAS's thread pool, which starts when numpy is imported, is pure start-up cost there;
# inference threads are onnxruntime's own.
COMMAND_ENV: dict[str, dict[str, str]] = {
    "classify": {"OPENBLAS_NUM_THREADS": "1"},
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """The command about to run (not one listed by --help): its environment defaults first."""
        if args:
            for key, value in COMMAND_ENV.get(args[0], {}).items():
                os.environ.setdefault(key, value)
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            return _checking_extra(getattr(importlib.import_module(module_name), attr), cmd_name)
        except ModuleNotFoundError as err:
            error = _missing_extra(err, cmd_name)
            if isinstance(error, MissingExtraError) and not (ctx.obj or {}).get("debug"):
                click.echo(f"error: {error}", err=True)
                sys.exit(error.exit_code)
            raise

    def invoke(self, ctx: click.Context):
        try:
            try:
                return super().invoke(ctx)
            except ModuleNotFoundError as err:
                raise _missing_extra(err, ctx.invoked_subcommand) from err
        except TumorEdgeError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _checking_extra(command: click.Command, name: str) -> click.Command:
    """The command, made to check its extra's modules after parsing (so --help still works) and before its own
    work."""
    if name not in COMMAND_NEEDS or command.callback is None:
        return command
    callback = command.callback

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        lacking = missing_for(name)
        if lacking:
            raise _needs_extra(name, *lacking)
        return callback(*args, **kwargs)

    wrapped = copy.copy(command)
    wrapped.callback = checked
    return wrapped


def _missing_extra(err: ModuleNotFoundError, command: str | None) -> Exception:
    """A missing optional dependency becomes one line naming the extra to install; any other missing module
    (a bug) stays the original error."""
    extra = extra_for(err.name, command)
    return err if extra is None else _needs_extra(command, extra, [err.name])


def _needs_extra(command: str | None, extra: str, modules: list[str]) -> MissingExtraError:
    what = f"`tumor-edge {command}`" if command else "this command"
    verb = "is" if len(modules) == 1 else "are"
    return MissingExtraError(f"{what} needs the `{extra}` extra ({', '.join(modules)} {verb} not installed): "
                             f"pip install 'tumor-edge[{extra}]'")


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
        quiet_tensorflow()


# ------------------------------------------------------------------ TensorFlow's start-up noise (not with --debug)

NOISY_PACKAGES = r"(tensorflow|keras|tf2onnx|tf_keras|absl|google\.protobuf)(\.|$)"


class _QuietImport:
    """Imports `tensorflow` with the process's stderr (fd 2) captured: TensorFlow's native libraries print
    "All log messages before absl::InitializeLog()" and oneDNN notes while loading, before TF_CPP_MIN_LOG_LEVEL
    is read, so no environment variable silences them. The capture is replayed if the import fails.

    A meta path finder by protocol (find_spec), not by subclassing importlib.abc, and everything else this needs
    (tempfile, logging) is imported when TensorFlow is: commands that never import it (classify) pay nothing."""

    _finding = False  # set while it asks the other finders, so it does not find itself

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    def __init__(self, loader) -> None:
        self.loader = loader

    def exec_module(self, module) -> None:
        import tempfile

        _quiet_loggers()
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                self.loader.exec_module(module)
            except BaseException:
                os.dup2(saved, 2)
                capture.seek(0)
                os.write(2, capture.read())
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    def __getattr__(self, name):  # is_package, get_code, ... as the real loader has them
        return getattr(self.loader, name)


def _quiet_loggers() -> None:
    import logging

    for name in ("absl", "tensorflow", "tf2onnx", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logs, its start-up notes, absl's logging and library warnings off the terminal.
    The loggers are set when TensorFlow loads (Keras and tf2onnx load it first), or now if it already has."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        _quiet_loggers()
    elif not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    warnings.filterwarnings("ignore", module=NOISY_PACKAGES)


if __name__ == "__main__":
    main()
