"""What one request may cost the server, against a real `tumor-edge serve` process: a map of every frame is
refused up front, an inference cap bounds the rest, a client that leaves stops its work, SIGTERM during a long
request ends within the grace period, and another client is answered meanwhile.

The long requests run on a model made slow on purpose (`slow_model`): a chain of matrix products per image, so a
request of many frames lasts many batches while each batch stays short. The checks compare the time work goes on
after a disconnect or SIGTERM with the time the whole request would take (tens of batches): no test depends on
how fast this CPU is beyond that ratio.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.runtime.models import save_quadrant
from tests.serve.models import bundle_with, slow_model
from tests.serve.process import Server, request, running_server

PRODUCTS = 1000  # matrix products per image: a batch of 4 takes a fraction of a second, 50 batches many seconds
LONG_FRAMES = 200  # within the default cap of 256 inferences: 50 batches of 4
GRACE_S = 5.0  # uvicorn's timeout_graceful_shutdown in serve
STOP_WITHIN_S = 3.0  # a stop lands at the next batch; the whole long request takes far longer
OCTETS = {"Content-Type": "application/octet-stream"}


def gif(frames: int, size: int = 8) -> bytes:
    """An animated GIF of `frames` frames of noise (noise, so that no two frames are the same)."""
    rng = np.random.default_rng(frames)
    images = [Image.fromarray(rng.integers(0, 255, (size, size), np.uint8)) for _ in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory) -> Path:
    return bundle_with(tmp_path_factory.mktemp("slow") / "bundle", slow_model(PRODUCTS))


@pytest.fixture()
def slow_server(slow_bundle, tmp_path) -> Iterator[Server]:
    with running_server(tmp_path / "run", "--model", str(slow_bundle), "--threads", "1") as server:
        yield server


def busy(server: Server) -> int:
    return json.loads(request(server.url + "/healthz", timeout=5).body)["busy"]


def until(condition, timeout_s: float) -> float | None:
    """Seconds until `condition()` held, polled every 50 ms; None when it did not within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def send_raw(server: Server, path: str, body: bytes) -> socket.socket:
    """A request sent whole on a socket that the caller reads or closes."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def _whole_answer(sock: socket.socket) -> str:
    """The server's whole answer: its head and the Content-Length bytes of body it announces (a single recv may
    return only the first TCP segment), or what came before the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


def test_a_map_of_every_frame_is_refused_up_front_and_others_are_answered(slow_server, tmp_path):
    """The 1,024-frame GIF with frames=all&heatmap=1 asks for an occlusion map per frame, tens of thousands of
    inferences: refused before its body is even read, and another client's plain request is answered."""
    body = gif(1024)
    host, port = slow_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as big:
        big.sendall((f"POST /v1/classify?frames=all&heatmap=1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        answer = _whole_answer(big)  # to a request whose body is never sent
        scan = save_quadrant(tmp_path / "scan.png", 2).read_bytes()
        plain = request(slow_server.url + "/v1/classify?filename=scan.png", "POST", scan, OCTETS, timeout=20)
    assert answer.startswith("HTTP/1.1 400") and "frames=middle" in answer, answer
    assert plain.status == 200 and plain.json()["label"] == "notumor"
    assert busy(slow_server) == 0


def test_frames_past_the_inference_cap_are_refused(server):
    """frames=all on a 1,024-frame GIF: more inferences than one request may run (the default cap, 256)."""
    reply = request(server.url + "/v1/classify?frames=all&filename=many.gif", "POST", gif(1024), OCTETS, timeout=60)
    assert reply.status == 413, reply.body[:300]
    assert "256 inferences" in reply.json()["error"]
    small = request(server.url + "/v1/classify?frames=all&filename=few.gif", "POST", gif(200), OCTETS, timeout=60)
    assert small.status == 200 and len(small.json()) == 200


def test_work_stops_when_the_client_disconnects(slow_server):
    sock = send_raw(slow_server, "/v1/classify?frames=all&filename=long.gif", gif(LONG_FRAMES))
    assert until(lambda: busy(slow_server) == 1, 20) is not None
    time.sleep(0.5)  # inference under way
    sock.close()
    stopped = until(lambda: busy(slow_server) == 0, 30)
    assert stopped is not None and stopped < STOP_WITHIN_S, f"work went on {stopped} s after the client left"


def test_sigterm_during_a_long_request_exits_within_the_grace_period(slow_server):
    sock = send_raw(slow_server, "/v1/classify?frames=all&filename=long.gif", gif(LONG_FRAMES))
    assert until(lambda: busy(slow_server) == 1, 20) is not None
    time.sleep(0.5)
    start = time.monotonic()
    slow_server.process.send_signal(signal.SIGTERM)
    slow_server.process.wait(timeout=GRACE_S + 10)
    took = time.monotonic() - start
    answer = _whole_answer(sock)
    sock.close()
    assert took < GRACE_S, f"exited {took:.1f} s after SIGTERM"
    assert "graceful shutdown exceeded" not in slow_server.stderr() and "Traceback" not in slow_server.stderr()
    assert answer.startswith("HTTP/1.1 503") and "shutting down" in answer


def test_a_plain_request_is_answered_while_a_long_one_runs(slow_server, tmp_path):
    """A long request (many frames, within the cap) takes turns with others a batch at a time: a plain request
    sent meanwhile waits for a batch, not for the whole long request."""
    scan = save_quadrant(tmp_path / "scan.png", 2).read_bytes()
    sock = send_raw(slow_server, "/v1/classify?frames=all&filename=long.gif", gif(LONG_FRAMES))
    assert until(lambda: busy(slow_server) == 1, 20) is not None
    time.sleep(0.5)  # inference under way
    start = time.monotonic()
    plain = request(slow_server.url + "/v1/classify?filename=scan.png", "POST", scan, OCTETS, timeout=60)
    took = time.monotonic() - start
    sock.close()
    assert plain.status == 200 and plain.json()["label"] == "notumor"
    assert took < STOP_WITHIN_S, f"answered after {took:.1f} s"
