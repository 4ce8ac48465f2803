"""The fast tier's guard: in a run that selected no slow test, entering training or export fails the run.

`tests/conftest.py` marks slow every test whose fixtures train or export; this guard catches what the marking
misses (a test body that trains, a fixture not yet listed). It wraps the functions where real work starts
(`TARGETS`) so that calling one appends a line to the file named by $TUMOR_EDGE_TEST_TIER_RECORD and raises.
The conftest installs it in the test process, and child processes get it as their `sitecustomize` (a copy of
this file on PYTHONPATH), so an export run by `subprocess` is caught too. The file imports nothing of the
repository: it must load in any Python process before anything else does.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

# module -> the attribute (a function, or Class.method) where training or export does its work
TARGETS = {"tumor_edge.train.fit": "fit_phases", "tumor_edge.export.plan": "plan_export"}
RECORD = "TUMOR_EDGE_TEST_TIER_RECORD"


def _owner_and_name(module, dotted: str):
    *outer, name = dotted.split(".")
    owner = module
    for part in outer:
        owner = getattr(owner, part)
    return owner, name


def _guard(module) -> None:
    """Replace the target of `module` by a function that records the call and raises; a module-level copy of a
    function taken before (`from m import f`) is replaced too."""
    dotted = TARGETS[module.__name__]
    owner, name = _owner_and_name(module, dotted)
    original = getattr(owner, name)
    where = f"{module.__name__}.{dotted}"

    def entered(*args, **kwargs):
        with open(os.environ[RECORD], "a", encoding="utf-8") as fh:
            fh.write(f"{where} (pid {os.getpid()})\n")
        raise RuntimeError(f"{where} entered in a fast-tier run: mark the test, or the fixture that trains or "
                           f"exports, slow (tests/conftest.py: SLOW_FIXTURES)")

    setattr(owner, name, entered)
    for other in list(sys.modules.values()):
        if other is not None and other is not module and getattr(other, name, None) is original:
            setattr(other, name, entered)


class _GuardFinder(importlib.abc.MetaPathFinder):
    """Finds a target module as the path finder does and guards it once its code has run."""

    def find_spec(self, name, path=None, target=None):
        if name not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _guard(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Guard the targets in this process: those imported already now, the others as they are imported."""
    if RECORD not in os.environ or any(isinstance(f, _GuardFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _GuardFinder())
    for name in TARGETS:
        if name in sys.modules:
            _guard(sys.modules[name])


if __name__ == "sitecustomize":
    install()
