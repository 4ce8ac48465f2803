"""The HTTP API against a real `tumor-edge serve` process over loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.models import CLASSES, png_bomb, save_quadrant, write_dicom
from tests.serve.conftest import CARD_TEXT
from tests.serve.process import REPO, multipart, request, running_server, serve_command, server_env

NOTICE_WORDS = "not a diagnostic device"


def _scan(tmp_path: Path, quadrant: int = 1) -> Path:
    return save_quadrant(tmp_path / f"q{quadrant}.png", quadrant)


def test_classify_multipart_matches_classify_json(server, serve_bundle, tmp_path):
    scan = _scan(tmp_path, 1)
    body, headers = multipart("q1.png", scan.read_bytes())
    reply = request(server.url + "/v1/classify", "POST", body, headers)
    assert reply.status == 200, reply.body
    assert NOTICE_WORDS in reply.headers["x-research-notice"]
    cli = subprocess.run([sys.executable, "-m", "tumor_edge.cli", "classify", "--json", "--model",
                          str(serve_bundle), str(scan)], capture_output=True, text=True, timeout=120,
                         env=server_env(tmp_path), cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout.strip())
    expected["file"] = "q1.png"
    served = reply.json()
    # This model has no class-activation head: a map through the model costs ~65 inferences, so only on request.
    assert "heatmap" not in served and "heatmap_method" not in served
    assert served.pop("model") == {"file": expected.pop("model_file"), "engine": expected.pop("engine")} == {
        "file": "model_fp32.onnx", "engine": "onnxruntime"}
    assert served == expected
    assert expected["label"] == CLASSES[1]


def test_a_map_through_the_model_only_when_asked(server, tmp_path):
    """`?heatmap=1` (the page asks for it) draws the predicted class's map by occlusion for a model without a
    class-activation head, and says which method drew it."""
    scan = _scan(tmp_path, 2)
    body, headers = multipart("q2.png", scan.read_bytes())
    reply = request(server.url + "/v1/classify?heatmap=1", "POST", body, headers)
    assert reply.status == 200, reply.body
    served = reply.json()
    assert served["heatmap_method"] == "occlusion 8x8" and len(served["heatmap"]) == 8
    grid = np.asarray(served["heatmap"])
    row, col = np.unravel_index(np.argmax(grid), grid.shape)
    assert (row >= 4, col >= 4) == (True, False)  # quadrant 2 is the bottom left one (see quadrant_image)
    bad = request(server.url + "/v1/classify?heatmap=maybe", "POST", body, headers)
    assert bad.status == 400 and "heatmap" in bad.json()["error"]


def test_raw_body_reports_the_given_name_without_folders(server, tmp_path):
    scan = _scan(tmp_path, 3)
    reply = request(server.url + "/v1/classify?filename=../../etc/x%0Ay.png", "POST", scan.read_bytes(),
                    {"Content-Type": "application/octet-stream"})
    assert reply.status == 200, reply.body
    assert reply.json()["label"] == CLASSES[3]
    assert reply.json()["file"] == "x\\ny.png"  # no folders; the newline escaped


def test_dicom_upload_middle_frame_and_all_frames(server, tmp_path):
    pytest.importorskip("pydicom", reason="the `dicom` extra is not installed")
    from tests.runtime.models import quadrant_image

    frames = np.stack([quadrant_image(q, 64)[..., 0].astype(np.uint16) * 200 for q in (0, 2, 3)])
    path = write_dicom(tmp_path / "series.dcm", frames)
    body, headers = multipart("series.dcm", path.read_bytes())
    middle = request(server.url + "/v1/classify", "POST", body, headers)
    assert middle.status == 200, middle.body
    assert middle.json()["label"] == CLASSES[2] and middle.json()["frame"] == 1
    every = request(server.url + "/v1/classify?frames=all", "POST", body, headers)
    assert [r["label"] for r in every.json()] == [CLASSES[0], CLASSES[2], CLASSES[3]]


def test_nifti_upload_is_one_volume_summary_with_its_slices(server, serve_bundle, tmp_path):
    """A volume upload goes through the runtime's readers (its `.nii.gz` suffix is the registry's): the answer is
    the volume summary `classify --json` prints, with the slice rows inside it."""
    pytest.importorskip("nibabel", reason="the `nifti` extra is not installed")
    from tests.runtime.volume_files import head, write_nifti

    path = write_nifti(tmp_path / "head.nii.gz", head())
    body, headers = multipart("head.nii.gz", path.read_bytes())
    reply = request(server.url + "/v1/classify", "POST", body, headers)
    assert reply.status == 200, reply.body
    served = reply.json()
    cli = subprocess.run([sys.executable, "-m", "tumor_edge.cli", "classify", "--json", "--model",
                          str(serve_bundle), str(path)], capture_output=True, text=True, timeout=120,
                         env=server_env(tmp_path), cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    *rows, summary = [json.loads(line) for line in cli.stdout.splitlines()]
    assert served["summary"] == "volume" and served["file"] == "head.nii.gz"
    assert served["label"] == summary["label"] and served["slices"] == summary["slices"]
    assert [(r["slice"], r["label"]) for r in served["slice_results"]] == [(r["slice"], r["label"]) for r in rows]


@pytest.mark.parametrize("make, reason", [
    (lambda d: (d / "junk.png").write_bytes(b"this is not an image") and d / "junk.png", "not an image"),
    (lambda d: png_bomb(d / "bomb.png"), "too large"),
])
def test_unreadable_scan_is_422_json_naming_the_file(server, tmp_path, make, reason):
    path = make(tmp_path)
    body, headers = multipart(path.name, path.read_bytes())
    reply = request(server.url + "/v1/classify", "POST", body, headers)
    assert reply.status == 422
    data = reply.json()
    assert data["file"] == path.name and data["error"].startswith(path.name + ": ") and reason in data["error"]
    assert "Traceback" not in reply.body.decode() and str(server.tmpdir) not in reply.body.decode()


@pytest.mark.parametrize("data, headers, status, words", [
    (b"", {"Content-Type": "application/octet-stream"}, 400, "empty body"),
    (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--x--\r\n",
     {"Content-Type": "multipart/form-data; boundary=x"}, 400, "no file part"),
    (b"abc", {"Content-Type": "multipart/form-data"}, 400, "boundary"),
])
def test_bad_requests_are_json_with_a_reason(server, data, headers, status, words):
    reply = request(server.url + "/v1/classify", "POST", data, headers)
    assert reply.status == status
    assert words in reply.json()["error"]


def _exchange(url: str, head: str, chunks=()) -> tuple[int, dict]:
    """Send a request head and body chunks over a raw socket (the server may answer and close before the body
    is complete, as it should for a body over the limit), then read the reply."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head.replace("Host: x", f"Host: {host}:{port}").encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_body_over_the_limit_is_413_declared_or_streamed(server):
    declared = (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {2 << 20}\r\n"
                "Connection: close\r\n\r\n")
    status, data = _exchange(server.url, declared)
    assert status == 413 and "limit" in data["error"]
    chunked = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    piece = b"\x00" * 65536
    status, data = _exchange(server.url, chunked, [b"10000\r\n" + piece + b"\r\n"] * 20 + [b"0\r\n\r\n"])
    assert status == 413 and "limit" in data["error"]


def test_unknown_route_wrong_method_and_bad_query_are_json(server):
    assert request(server.url + "/nope").json() == {"error": "no such endpoint: /nope"}
    wrong = request(server.url + "/v1/classify")
    assert wrong.status == 405 and "not allowed" in wrong.json()["error"]
    bad = request(server.url + "/v1/classify?frames=some", "POST", b"x")
    assert bad.status == 400 and "frames" in bad.json()["error"]


def test_model_describes_the_bundle_and_its_card(server):
    reply = request(server.url + "/v1/model")
    assert reply.status == 200
    data = reply.json()
    assert data["metadata"]["classes"] == CLASSES
    assert data["model_file"] == "model_fp32.onnx" and data["providers"] == ["CPUExecutionProvider"]
    assert data["model_card"] == CARD_TEXT
    assert NOTICE_WORDS in data["notice"]


def test_openapi_describes_every_route(server):
    doc = request(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/classify", "/v1/model", "/healthz", "/"} <= set(doc["paths"])
    for path, methods in doc["paths"].items():
        for method in methods:
            probe = request(server.url + path, method.upper(), b"" if method == "post" else None)
            assert probe.status != 404 and probe.status != 405, (path, method)


def test_page_is_self_contained_with_a_strict_policy(server):
    reply = request(server.url + "/")
    html = reply.body.decode()
    assert reply.status == 200 and NOTICE_WORDS in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy


def test_no_uploaded_bytes_left_on_disk(server, tmp_path):
    """Runs after the others in this file: every upload (good, bad, too big) has left the server's TMPDIR."""
    scan = _scan(tmp_path, 0).read_bytes()
    assert request(server.url + "/v1/classify", "POST", scan).status == 200
    assert request(server.url + "/v1/classify", "POST", b"junk-bytes-0123456789").status == 422
    left = list(server.tmpdir.rglob("*"))
    assert not [p for p in left if p.name.startswith("tumor-edge-serve-")]
    for path in left:  # onnxruntime keeps a small session-id file (.ses) there: it holds no upload
        if path.is_file():
            content = path.read_bytes()
            assert scan not in content and b"junk-bytes-0123456789" not in content, path


def test_token_required_on_the_api_not_on_health(serve_bundle, tmp_path):
    with running_server(tmp_path, "--model", str(serve_bundle), "--token", "s3cret") as s:
        denied = request(s.url + "/v1/model")
        assert denied.status == 401 and "bearer token" in denied.json()["error"]
        assert denied.headers["www-authenticate"] == "Bearer"
        wrong = request(s.url + "/v1/classify", "POST", b"x", {"Authorization": "Bearer nope"})
        assert wrong.status == 401
        ok = request(s.url + "/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
        assert request(s.url + "/healthz").status == 200


def _hold_a_place(url: str, declared: int = 10_000) -> socket.socket:
    """A client that sends headers and part of its body, then waits: it holds an upload place."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {declared}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + b"\x00" * 100)
    return sock


def _wait_uploading(url: str, done, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(request(url + "/healthz").json()["uploading"]) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_full_upload_places_are_503_with_retry_after_then_recover(serve_bundle, tmp_path):
    """A client address holding every upload place it may (UPLOAD_PLACES_PER_CLIENT) gets 503 with Retry-After
    for its next upload; once its bodies are gone it gets in again."""
    from tumor_edge.serve.config import ServeConfig

    per_client = ServeConfig().upload_places_per_client
    with running_server(tmp_path, "--model", str(serve_bundle)) as s:
        holders = [_hold_a_place(s.url) for _ in range(per_client)]
        try:
            _wait_uploading(s.url, lambda n: n >= per_client)
            busy = request(s.url + "/v1/classify", "POST", _scan(tmp_path).read_bytes())
            assert busy.status == 503
            assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        finally:
            for holder in holders:
                holder.close()
        _wait_uploading(s.url, lambda n: n == 0)
        assert request(s.url + "/v1/classify", "POST", _scan(tmp_path).read_bytes()).status == 200


def test_slow_sender_gets_408(serve_bundle, tmp_path):
    with running_server(tmp_path, "--model", str(serve_bundle), "--read-timeout", "0.5") as s:
        holder = _hold_a_place(s.url)
        reply = b""
        try:
            holder.settimeout(15)
            while b'"}' not in reply and (data := holder.recv(65536)):
                reply += data
        finally:
            holder.close()
        assert reply.startswith(b"HTTP/1.1 408") and b'"error":"the body did not arrive within 0.5 s"' in reply


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "--token"),
    (["--model", "no/such/bundle"], "no such bundle"),
])
def test_refusals_are_one_line_before_listening(tmp_path, serve_bundle, args, words):
    cmd = serve_command(*(["--model", str(serve_bundle)] if "--model" not in args else []), *args)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=server_env(tmp_path), cwd=REPO)
    assert run.returncode != 0
    assert words in run.stderr and "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1
