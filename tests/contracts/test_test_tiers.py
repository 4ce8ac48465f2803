"""The fast tier trains and exports nothing: tests reaching a training or export fixture are marked slow by the
conftest, and the guard that fails a fast run entering training or export wraps functions that exist."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tier_guard
from tests.conftest import SLOW_FIXTURES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", sorted(tier_guard.TARGETS))
def test_the_guard_targets_exist(module):
    """Read from the source (importing them would start TensorFlow): a target moved or renamed fails here, so the
    guard cannot silently watch nothing."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    *outer, name = tier_guard.TARGETS[module].split(".")
    body = tree.body
    for part in outer:
        body = next(node.body for node in body if isinstance(node, ast.ClassDef) and node.name == part)
    assert any(isinstance(node, ast.FunctionDef) and node.name == name for node in body)


def test_the_guard_records_and_refuses_a_target_and_its_imported_copies(tmp_path, monkeypatch):
    package = tmp_path / "tierfake"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "work.py").write_text("def train():\n    return 'trained'\n")
    (package / "user.py").write_text("from tierfake.work import train\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(tier_guard.TARGETS, "tierfake.work", "train")
    monkeypatch.setenv(tier_guard.RECORD, str(tmp_path / "entered.txt"))
    finder = tier_guard._GuardFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import tierfake.user
        import tierfake.work

        for train in (tierfake.work.train, tierfake.user.train):
            with pytest.raises(RuntimeError, match="tierfake.work.train entered in a fast-tier run"):
                train()
        assert (tmp_path / "entered.txt").read_text().count("tierfake.work.train") == 2
    finally:
        for name in ("tierfake.user", "tierfake.work", "tierfake"):
            sys.modules.pop(name, None)


PLUGIN = """
import json, os

def pytest_collection_finish(session):
    with open(os.environ["TIER_ITEMS"], "w") as fh:
        json.dump({item.nodeid: list(item.fixturenames) for item in session.items}, fh)
"""


def test_no_fast_test_reaches_a_training_or_export_fixture(tmp_path):
    """tests/bench reaches the session's trained and exported bundle through its `record` fixture and a tiny
    export through `tiny_onnx`, without a mark in its own files: collected with -m "not slow", none is left."""
    (tmp_path / "tier_items.py").write_text(PLUGIN)
    env = {**os.environ, "TIER_ITEMS": str(tmp_path / "items.json"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p",
                           "tier_items", "-p", "no:cacheprovider", "tests/bench"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    items = json.loads((tmp_path / "items.json").read_text())
    assert items  # the bench has fast tests
    assert {node: sorted(SLOW_FIXTURES & set(names)) for node, names in items.items()
            if SLOW_FIXTURES & set(names)} == {}


def test_the_session_check_finds_what_only_training_and_export_write():
    """In a folder of its own: under the session's temporary folder these files would fail the run they are in."""
    import tempfile

    from tests.conftest import _trained_or_exported

    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        for folder, file, text in (("run", "history.csv", "epoch,loss\n"),
                                   ("exported", "metadata.json", '{"provenance": {"export_seconds": 1.0}}'),
                                   ("made_by_hand", "metadata.json", '{"provenance": {}}')):
            (root / folder).mkdir()
            (root / folder / file).write_text(text)
        assert sorted(_trained_or_exported(root)) == [f"exported into {root / 'exported'}",
                                                      f"trained into {root / 'run'}"]
