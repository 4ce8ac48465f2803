"""The server's pure parts: file names, multipart in memory, the bind rule, admission."""

from __future__ import annotations

import asyncio

import pytest

from tumor_edge.errors import ConfigError
from tumor_edge.serve.admission import Admission, Busy
from tumor_edge.serve.config import ServeConfig, check_bind, is_loopback
from tumor_edge.serve.errors import HttpError
from tumor_edge.serve.upload import clean_filename, parse_upload


@pytest.mark.parametrize("raw, clean", [
    ("scan.png", "scan.png"), ("../../etc/passwd", "passwd"), ("C:\\scans\\a.dcm", "a.dcm"),
    ("a\x00b\nc.png", "abc.png"), ("", "upload"), (None, "upload"), ("x" * 500, "x" * 200), (b"\xff.png", "\ufffd.png"),
])
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


def _form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--B0undary\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + b"--B0undary--\r\n", "multipart/form-data; boundary=B0undary"


def test_multipart_keeps_binary_bytes_exactly_and_prefers_the_file_field():
    payload = bytes(range(256)) * 4 + b"\r\n--B0undar\r\n\r\n"
    body, ctype = _form(("note", None, b"hello"), ("other", "o.png", b"other"), ("file", "scan.dcm", payload))
    upload = parse_upload(body, ctype, None, None)
    assert upload.data == payload and upload.filename == "scan.dcm"


def test_multipart_without_a_file_field_takes_the_first_file():
    body, ctype = _form(("image", "a.png", b"abc"))
    assert parse_upload(body, ctype, None, None).filename == "a.png"


@pytest.mark.parametrize("body, ctype, words", [
    (b"", "application/octet-stream", "empty body"),
    (b"x", "multipart/form-data", "boundary"),
    (_form(("file", "e.png", b""))[0], _form()[1], "empty file"),
    (b"--B0undary\r\nno headers end", _form()[1], "malformed multipart"),
    (b"--B0undary\r\nContent-Disposition: form-data; name=\"f\"; filename=\"t.png\"\r\n\r\nabc", _form()[1],
     "no file part"),  # truncated: the part never ends
])
def test_bad_uploads(body, ctype, words):
    with pytest.raises(HttpError) as caught:
        parse_upload(body, ctype, None, None)
    assert caught.value.status == 400 and words in caught.value.reason


def test_raw_body_name_from_query_or_disposition():
    assert parse_upload(b"x", "", "q.png", 'attachment; filename="d.png"').filename == "q.png"
    assert parse_upload(b"x", "", None, 'attachment; filename="d%20e.png"').filename == "d e.png"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.4", False), ("example.org", False)])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_bind_rule():
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "t", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="--token"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ConfigError):
        ServeConfig(concurrency=0).validate()


def test_admission_refuses_beyond_capacity_and_frees_places():
    async def scenario():
        gate = Admission(concurrency=1, queue=1)
        async with gate.enter(), gate.enter():
            with pytest.raises(Busy):
                async with gate.enter():
                    pass
            assert gate.admitted == 2
        assert gate.admitted == 0
        async with gate.enter(), gate.slot():
            assert gate.admitted == 1

    asyncio.run(scenario())


def test_the_server_never_imports_tensorflow():
    import subprocess
    import sys

    code = ("import sys, tumor_edge.cli, tumor_edge.serve.app, tumor_edge.serve.server, tumor_edge.serve.commands; "
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
