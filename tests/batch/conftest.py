"""Fixtures for the batch tests: a small real bundle (the runtime tests' quadrant model), folders of scans whose
class is known, and a Ray sandbox.

Every Ray process these tests start runs with RAY_TMPDIR set to a fresh folder, so the teardown can find each of
them (workers rename themselves `ray::...`, but keep their environment) and assert that none is left. Ray binds
127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: its single-machine mode) and uses token authentication with a
token of the session's own, never the user's ~/.ray/auth_token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.runtime.models import CLASSES, make_bundle, save_quadrant

SANDBOX_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_processes(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment holds `marker`, other than this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and not _is_resource_tracker(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _is_resource_tracker(entry: Path) -> bool:
    """multiprocessing's resource tracker: a helper of this test process that lives as long as it does (started
    by the first spawned child, it inherits the sandbox's environment if that comes while the sandbox is set)."""
    return b"multiprocessing.resource_tracker" in (entry / "cmdline").read_bytes()


@pytest.fixture(scope="package")
def ray_sandbox():
    """The environment every Ray process of these tests runs in; at the end, none of them may be left."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # found, not imported: Ray reads its mode when imported
        pytest.skip("the `ray` extra is not installed")
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    saved = {k: os.environ.get(k) for k in (*SANDBOX_ENV, "RAY_TMPDIR", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    os.environ.update(SANDBOX_ENV, RAY_TMPDIR=folder, RAY_AUTH_TOKEN=secrets.token_hex(16))
    os.environ.pop("RAY_ADDRESS", None)
    marker = f"RAY_TMPDIR={folder}"
    yield marker
    deadline = time.monotonic() + 30
    while ray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = ray_processes(marker)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(folder, ignore_errors=True)
    assert left == [], f"Ray processes left behind: {left}"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("batch-bundle"))


@pytest.fixture(scope="session")
def scans(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """300 PNGs of known class (their path -> class), in subfolders as an archive has them."""
    folder = tmp_path_factory.mktemp("batch-scans")
    expected = {}
    for i in range(300):
        path = save_quadrant(folder / f"site{i % 3}" / f"scan{i:04d}.png", i % 4)
        expected[str(path)] = CLASSES[i % 4]
    return folder, expected


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumor_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tumor_edge.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_rows(results: Path) -> list[dict]:
    """Every row of RESULTS as a reader of the dataset gets them (deduplicated on identity)."""
    from tumor_edge.batch.store import Store

    table = Store.open(str(results)).read()
    return [] if table is None else table.to_pylist()
