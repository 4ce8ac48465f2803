"""The server against hostile clients and broken bundles, each over real loopback sockets against a
real `tumor-edge serve` process: slow senders, half-sent headers, a foreign Host header (DNS rebinding), absolute
paths in errors, a model that cannot run, symlinks leaving the bundle, raw values shown as probabilities."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.runtime.models import CLASSES, save_quadrant
from tests.serve.models import bundle_with, extra_class_model, five_class_model, raw_output_model
from tests.serve.process import REPO, multipart, request, running_server, serve_command, server_env

TRICKLE_S = 0.5  # one byte per half second: a slow sender
DEFAULT_HEADER_TIMEOUT_S = 5.0  # ServeConfig.header_timeout_s
CLOSE_MARGIN_S = 2.5  # scheduling slack on a loaded 2-core machine, on top of the timeout


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A loopback connection from `source` (any 127/8 address is this machine: a second 'client address')."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(_address(url))
    return sock


def _scan(tmp_path: Path, quadrant: int = 1) -> bytes:
    return save_quadrant(tmp_path / f"q{quadrant}.png", quadrant).read_bytes()


def _raw(url: str, head: str, body: bytes = b"", source: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request over a raw socket (to send any Host header, from any loopback address): (status, body)."""
    with _connect(url, source) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    return int(reply.split(b" ", 2)[1]), reply.split(b"\r\n\r\n", 1)[1]


def _upload(url: str, data: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    host, port = _address(url)
    head = (f"POST /v1/classify?filename=scan.png HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(data)}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    return _raw(url, head, data, source)


@contextmanager
def _slow_senders(url: str, count: int, source: str = "127.0.0.1", declared: int = 1000):
    """`count` uploads whose bodies trickle in one byte per TRICKLE_S from `source`, for as long as the block
    runs (their declared bodies never complete within it)."""
    host, port = _address(url)
    socks = []
    for _ in range(count):
        sock = _connect(url, source)
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {declared}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n\x00".encode())
        socks.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(TRICKLE_S):
            for sock in socks:
                with suppress(OSError):
                    sock.sendall(b"\x00")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(2 * TRICKLE_S)  # every sender is in, its body trickling
        yield socks
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


# ---- 1. slow senders cannot starve other uploads ---------------------------------------------------------------


def test_three_slow_senders_do_not_starve_other_uploads(serve_bundle, tmp_path):
    """With one inference place and a queue of 2, 3 trickling bodies leave every other upload served: admission
    is taken once a body has arrived, so a slow body holds no inference place."""
    scan = _scan(tmp_path)
    args = ("--model", str(serve_bundle), "--concurrency", "1", "--queue", "2")
    with running_server(tmp_path, *args) as s, _slow_senders(s.url, 3):
        statuses = [_upload(s.url, scan)[0] for _ in range(5)]
        busy = request(s.url + "/healthz").json()
    assert statuses == [200] * 5, statuses
    assert busy["uploading"] == 3 and busy["busy"] == 0


def test_many_slow_senders_from_one_address_starve_only_that_address(serve_bundle, tmp_path):
    """At the defaults, 17 trickling connections from one client address: that address holds at most
    `upload_places_per_client` uploads, its next one is 503 (with Retry-After), every other client still gets in."""
    scan = _scan(tmp_path, 2)
    with running_server(tmp_path, "--model", str(serve_bundle)) as s, _slow_senders(s.url, 17, source="127.0.0.2"):
        others = [_upload(s.url, scan)[0] for _ in range(3)]
        status, body = _upload(s.url, scan, source="127.0.0.2")
    assert others == [200] * 3, others
    assert status == 503 and "your address" in json.loads(body)["error"]


# ---- 2. a header timeout ------------------------------------------------------------------------------------------


def test_connections_that_never_finish_their_headers_are_closed(serve_bundle, tmp_path):
    """Silent, half-sent and byte-by-byte headers (a first request, and a second one on a kept-alive connection)
    are all closed within the default header timeout, measured from the connection (or the next request's first
    byte); so is a body still trickling in after its request was answered unread (a 404): none can hold a
    connection open."""
    with running_server(tmp_path, "--model", str(serve_bundle)) as s:
        host, port = _address(s.url)
        partial = f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Le".encode()
        silent, half, dribble, second, unread = (_connect(s.url) for _ in range(5))
        second.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        assert second.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        half.sendall(partial)
        second.sendall(partial)
        unread.sendall(f"POST /nope HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 100000\r\n\r\n".encode())
        pending = {silent: "silent", half: "half", dribble: "dribble", second: "second", unread: "unread"}
        closed_after: dict[str, float] = {}
        replies: dict[str, bytes] = {name: b"" for name in pending.values()}
        deadline = started + DEFAULT_HEADER_TIMEOUT_S + CLOSE_MARGIN_S
        sent = 0
        while pending and time.monotonic() < deadline:
            if sent < len(partial) and time.monotonic() > started + sent * TRICKLE_S:
                with suppress(OSError):
                    dribble.sendall(partial[sent:sent + 1])
                with suppress(OSError):
                    unread.sendall(b"\x00")
                sent += 1
            ready, _, _ = select.select(list(pending), [], [], 0.05)
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                replies[pending[sock]] += data
                if not data:
                    closed_after[pending.pop(sock)] = time.monotonic() - started
        for sock in (silent, half, dribble, second, unread):
            sock.close()
    assert not pending, f"still open after {deadline - started:.1f} s: {sorted(pending.values())}"
    assert all(t <= DEFAULT_HEADER_TIMEOUT_S + CLOSE_MARGIN_S for t in closed_after.values()), closed_after
    assert replies["half"].startswith(b"HTTP/1.1 408") and b"headers" in replies["half"]
    assert replies["silent"] == b"" and replies["unread"].startswith(b"HTTP/1.1 404")


# ---- 3. the Host header -------------------------------------------------------------------------------------------


def _get(url: str, host_header: str, path: str = "/v1/model") -> tuple[int, bytes]:
    return _raw(url, f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n")


def test_a_foreign_host_header_is_refused(server):
    """DNS rebinding: a page from attacker.example whose name now resolves to 127.0.0.1 sends its own Host."""
    _, port = _address(server.url)
    for name in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}",
                 "127.0.0.1:1"):
        status, body = _get(server.url, name)
        assert status == 421, (name, status)
        reason = json.loads(body)["error"]
        assert "--allow-host" in reason and "Host" in reason
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert _get(server.url, name)[0] == 200, name
    status, body = _raw(server.url, "GET /healthz HTTP/1.0\r\n\r\n")
    assert status == 400 and "Host" in json.loads(body)["error"]


def test_allow_host_accepts_a_named_host(serve_bundle, tmp_path):
    with running_server(tmp_path, "--model", str(serve_bundle), "--allow-host", "scans.lab",
                        "--allow-host", "Ward7.local") as s:
        assert _get(s.url, "scans.lab")[0] == 200
        assert _get(s.url, "ward7.local:443")[0] == 200
        assert _get(s.url, "attacker.example")[0] == 421


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "null"},  # a sandboxed frame, a file:// page
    {"Sec-Fetch-Site": "same-site"},  # another port or subdomain of the same site: another origin all the same
    {"Origin": "http://127.0.0.1:1"},  # this host, another port: another origin
    {"Origin": "http://localhost.evil.example:{port}"},
])
def test_a_cross_site_post_is_refused_without_a_token(server, tmp_path, headers):
    """Any web page the user opens can send a form POST to a tokenless loopback server; the browser marks it with
    Origin and Sec-Fetch-Site, and such a request is refused before its body is read."""
    _, port = _address(server.url)
    body, form = multipart("scan.png", _scan(tmp_path))
    sent = {k: v.format(port=port) for k, v in headers.items()}
    reply = request(server.url + "/v1/classify", "POST", body, {**form, **sent})
    assert reply.status == 403, (headers, reply.status, reply.body)
    assert "cross-site" in reply.json()["error"]


@pytest.mark.parametrize("headers", [
    {},  # a script or curl: no browser, no page to borrow the user's access
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed by the user
    {"Origin": "{url}", "Sec-Fetch-Site": "same-origin"},  # the server's own page
    {"Origin": "http://localhost:{port}"},
])
def test_the_servers_own_page_and_plain_clients_may_post(server, tmp_path, headers):
    _, port = _address(server.url)
    body, form = multipart("scan.png", _scan(tmp_path))
    sent = {k: v.format(url=server.url, port=port) for k, v in headers.items()}
    sent.update({"Host": f"localhost:{port}"} if "localhost" in sent.get("Origin", "") else {})
    reply = request(server.url + "/v1/classify", "POST", body, {**form, **sent})
    assert reply.status == 200, (headers, reply.status, reply.body)


# ---- 4. no absolute path in any response; a model that cannot run never listens ----------------------------------


def test_a_bundle_that_cannot_run_is_refused_before_the_port_opens(tmp_path):
    """Five outputs for four classes: every request would be a 500. One line, exit non-zero, never listening."""
    bundle = bundle_with(tmp_path / "five", five_class_model())
    run = subprocess.run(serve_command("--model", str(bundle)), capture_output=True, text=True, timeout=60,
                         env=server_env(tmp_path), cwd=REPO)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr and "serving" not in run.stderr, run.stderr
    assert "model_fp32.onnx" in lines[0] and "shape" in lines[0]


def test_a_model_failing_on_a_scan_answers_500_without_paths(tmp_path):
    """The model runs on a blank image (so it starts) and fails on a real scan with an error naming its file:
    the client reads the file's name, never the bundle's absolute folder."""
    bundle = bundle_with(tmp_path / "extra", extra_class_model())
    with running_server(tmp_path / "run", "--model", str(bundle)) as s:
        reply = request(s.url + "/v1/classify", "POST", _scan(tmp_path))
        log = s.stderr()
    text = reply.body.decode()
    assert reply.status == 500 and "model_fp32.onnx" in reply.json()["error"]
    assert str(bundle) not in text and str(tmp_path) not in text and "/" not in reply.json()["error"], text
    assert str(bundle) in log  # the operator still sees where


def test_raw_model_outputs_are_not_shown_as_probabilities(tmp_path):
    """A model giving 1.39e10 for a scan: a clear error, never a 'probability' of 13.9 billion."""
    bundle = bundle_with(tmp_path / "raw", raw_output_model())
    with running_server(tmp_path / "run", "--model", str(bundle)) as s:
        body, headers = multipart("bright.png", _scan(tmp_path, 3))
        reply = request(s.url + "/v1/classify", "POST", body, headers)
    assert reply.status == 500, reply.body
    data = reply.json()
    assert "probabilities" not in data and "label" not in data
    # serve's own check, or the runtime's (which runs first since bundles are sealed): both name the values
    assert ("not probabilities" in data["error"] or "declared probabilities in metadata.json but are not"
            in data["error"]) and "1.39e+10" in data["error"]


# ---- 5. no file read through a symlink, nor from outside the bundle ---------------------------------------------


def _bundle_copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_symlinked_model_card_is_not_served(serve_bundle, tmp_path, target):
    secret = tmp_path / "secret.txt" if target == "outside" else tmp_path / "bundle" / "notes.md"
    bundle = _bundle_copy(serve_bundle, tmp_path / "bundle")
    secret.write_text("SECRET-TOKEN-42\n")
    card = bundle / "MODEL_CARD.md"
    card.unlink()
    card.symlink_to(secret)
    with running_server(tmp_path / "run", "--model", str(bundle)) as s:
        reply = request(s.url + "/v1/model")
    assert reply.status == 200
    assert b"SECRET-TOKEN-42" not in reply.body and str(tmp_path).encode() not in reply.body
    data = reply.json()
    assert data["model_card"] is None and "symbolic link" in data["model_card_error"]


@pytest.mark.parametrize("name", ["metadata.json", "model_fp32.onnx"])
def test_bundle_files_through_symlinks_are_refused_at_start(serve_bundle, tmp_path, name):
    """The same bytes (so the sha256 matches) through a link to a file outside the bundle: refused, one line,
    metadata.json as much as the model."""
    bundle = _bundle_copy(serve_bundle, tmp_path / "bundle")
    outside = tmp_path / ("outside-" + name)
    os.replace(bundle / name, outside)
    (bundle / name).symlink_to(outside)
    run = subprocess.run(serve_command("--model", str(bundle)), capture_output=True, text=True, timeout=60,
                         env=server_env(tmp_path), cwd=REPO)
    assert run.returncode != 0 and "serving" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0], run.stderr
    assert "symbolic link" in lines[0] or "outside the bundle" in lines[0], run.stderr


# ---- the model and engine behind every answer ------------------------------------------------------------------


def test_responses_name_the_model_file_and_engine(server, tmp_path):
    expected = {"file": "model_fp32.onnx", "engine": "onnxruntime"}
    reply = request(server.url + "/v1/classify", "POST", _scan(tmp_path, 0))
    assert reply.status == 200 and reply.json()["label"] == CLASSES[0]
    assert reply.json()["model"] == expected
    assert request(server.url + "/v1/model").json()["model"] == expected


def test_model_description_shows_no_folder_of_any_machine(serve_bundle, tmp_path):
    """A bundle's provenance records where it was exported from (source model, run folder, data root): the
    server hands out their names, not the exporting machine's folders."""
    from tumor_edge.contracts.bundle import BundleMetadata

    bundle = _bundle_copy(serve_bundle, tmp_path / "bundle")
    metadata = BundleMetadata.read(bundle)
    metadata.provenance = {"source": {"kind": "keras", "path": "/home/alice/runs/r1/model.keras"},
                           "run_dir": str(tmp_path / "runs" / "r1"), "data_root": "C:\\scans\\brain",
                           "parity": "proven"}
    metadata.write(bundle)
    with running_server(tmp_path / "run", "--model", str(bundle)) as s:
        reply = request(s.url + "/v1/model")
    text = reply.body.decode()
    assert reply.status == 200 and "/home/alice" not in text and str(tmp_path) not in text and "scans" not in text
    provenance = reply.json()["metadata"]["provenance"]
    assert provenance["source"] == {"kind": "keras", "path": "model.keras"} and provenance["run_dir"] == "r1"
    assert provenance["data_root"] == "brain" and provenance["parity"] == "proven"
