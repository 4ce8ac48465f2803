"""The optional extras and the modules each brings: one table for `tumor-edge env`, the CLI's missing-extra
message and the test that declared dependencies match imports. Imports nothing heavy.

The extras of engines and input types are not written here: they come from their rows (the format table's
`ENGINES`, the readers' `READERS`), read when asked, so an engine or a reader added there is reported as is.
"""

from __future__ import annotations

import importlib.util

from tumor_edge.contracts.formats import ENGINES

# extra -> the top-level modules it provides (import names, not distribution names), for the extras no row names
OWN_EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn", "matplotlib", "nibabel", "nilearn", "scipy",
              "sympy"),
    "jax": ("jax",),  # train --backend jax
    "serve": ("starlette", "uvicorn", "python_multipart"),
    "sign": ("model_signing", "OpenSSL", "cryptography"),  # model-signing imports pyOpenSSL without declaring it
}


def all_extras() -> dict[str, tuple[str, ...]]:
    """extra -> its modules: the table above, each engine's extra and probed module, each reader's extra and
    modules, as the rows are now. The readers' registry is imported here, not with this module: the CLI reads
    this module on every start."""
    from tumor_edge import runtime  # its public `readers` module

    out = dict(OWN_EXTRAS)
    rows = [(e.extra, (e.module,) if e.module else ()) for e in ENGINES.values()]
    rows += [(r.extra, r.modules) for r in runtime.readers.readers()]
    for extra, modules in rows:
        if extra and modules:
            out[extra] = tuple(dict.fromkeys(out.get(extra, ()) + modules))
    return out


# command -> (the extra it needs beyond the runtime install, the modules checked before it starts); commands not
# listed need none. The check runs before the command's own work, so `train` on the runtime install says which
# extra to install at once instead of after reading a dataset.
COMMAND_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("train", ("tensorflow", "keras")),
    "evaluate": ("train", ("tensorflow", "keras", "sklearn")),
    "export": ("train", ("tensorflow", "tf2onnx", "onnx")),
    "demo": ("train", ("tensorflow", "keras", "nibabel", "scipy", "sklearn")),
    "demo-data": ("train", ("nibabel", "scipy")),
    "serve": ("serve", ("starlette", "uvicorn", "python_multipart")),
    "sign": ("sign", ("model_signing", "OpenSSL")),
}


def extra_for(module: str | None, command: str | None = None) -> str | None:
    """The extra that provides top-level `module` (the command's own extra first), None if no extra does."""
    top = (module or "").split(".")[0]
    own = COMMAND_NEEDS.get(command or "", (None, ()))[0]
    extras = all_extras()
    if own and top in extras[own]:
        return own
    return next((extra for extra, modules in extras.items() if top in modules), None)


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, not imported: `env` must not pay for TensorFlow's start)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# Modules of COMMAND_NEEDS a command can run without: `train --backend jax|torch` needs no TensorFlow. They are
# named when missing only if a module the command cannot do without is missing too.
CAN_RUN_WITHOUT: dict[str, tuple[str, ...]] = {"train": ("tensorflow",)}


def missing_for(command: str) -> tuple[str, list[str]] | None:
    """(extra, missing modules) when `command` cannot run on this install, else None."""
    extra, modules = COMMAND_NEEDS.get(command, (None, ()))
    missing = [m for m in modules if not installed(m)]
    # nothing missing (an unlisted command lists nothing) or only what the command can do without: it runs
    return None if all(m in CAN_RUN_WITHOUT.get(command, ()) for m in missing) else (extra, missing)


def extras_present() -> dict[str, dict[str, bool]]:
    """extra -> {module: installed}."""
    return {extra: {m: installed(m) for m in modules} for extra, modules in all_extras().items()}
