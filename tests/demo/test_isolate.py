"""The demo's heavy stages run in a child process: results and errors come back as if run here."""

from __future__ import annotations

import os
import sys

import pytest

from tumor_edge.demo.isolate import run_isolated
from tumor_edge.errors import DatasetError


def _fails(path: str) -> None:
    raise DatasetError("no images here", path)


def _pid_and_modules(name: str) -> tuple[int, bool]:
    __import__(name)
    return os.getpid(), name in sys.modules


def test_result_comes_back_from_another_process():
    pid, loaded = run_isolated(_pid_and_modules, "json")
    assert pid != os.getpid() and loaded


def test_error_comes_back_with_its_type_and_line():
    with pytest.raises(DatasetError, match="^/x: no images here$"):
        run_isolated(_fails, "/x")


def test_a_killed_child_is_one_line_error():
    from tumor_edge.errors import TumorEdgeError

    with pytest.raises(TumorEdgeError, match="died"):
        run_isolated(os._exit, 9)
