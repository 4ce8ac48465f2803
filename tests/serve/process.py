"""A real `tumor-edge serve` process on a random loopback port, for the HTTP and browser tests.

Started with `--port 0` (the server binds, then prints its URL), waited for on /healthz with a deadline, and
always terminated (then killed) on the way out. TMPDIR is the test's own folder, so a test can check that no
uploaded bytes were left behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(r"on (http://127\.0\.0\.1:\d+)/")
START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 30


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    tmpdir: Path
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tumor_edge.cli", "serve", "--port", "0", *args]


def server_env(tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO), **extra}
    env.pop("TUMOR_EDGE_TOKEN", None)
    return env


@contextmanager
def running_server(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    log = workdir / "server.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(serve_command(*args), stdout=subprocess.DEVNULL, stderr=err, cwd=workdir,
                                   env={**server_env(tmpdir), **(env or {})})
    try:
        url = _wait_for_url(process, log)
        _wait_healthy(url, process, log)
        yield Server(url, process, tmpdir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for_url(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = URL_LINE.search(log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise TimeoutError(f"server printed no URL within {START_TIMEOUT_S} s: {log.read_text(errors='replace')}")


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            if process.poll() is not None:
                raise RuntimeError(f"server died: {log.read_text(errors='replace')}") from None
        time.sleep(0.05)
    raise TimeoutError(f"/healthz not ready within {START_TIMEOUT_S} s")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = REQUEST_TIMEOUT_S) -> Reply:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def multipart(filename: str, data: bytes, field: str = "file") -> tuple[bytes, dict[str, str]]:
    boundary = "tumoredgeboundary7d3f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
