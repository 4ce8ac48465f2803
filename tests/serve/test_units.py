"""The server's pure parts: file names, multipart in memory, the bind rule, admission."""

from __future__ import annotations

import asyncio

import pytest

from tumor_edge.errors import ConfigError
from tumor_edge.serve.admission import Admission, Busy
from tumor_edge.serve.app import clean_filename, parse_upload
from tumor_edge.serve.config import ServeConfig, check_bind, is_loopback
from tumor_edge.serve.hosts import HttpError


@pytest.mark.parametrize("raw, clean", [
    ("scan.png", "scan.png"), ("../../etc/passwd", "passwd"), ("C:\\scans\\a.dcm", "a.dcm"),
    ("a\x00b\nc\u202e.png", "a\\x00b\\nc\\u202e.png"),
    ("", "upload"), (None, "upload"), ("x" * 500, "x" * 200), (b"\xff.png", "\ufffd.png"),
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


@pytest.mark.parametrize("token", ["pässwort", "tab\there", "", " lead"])
def test_a_token_no_client_can_send_is_refused_at_start(token):
    """A token no client can send (headers arrive as latin-1: a non-ASCII token could never match) would lock
    everyone out. A bearer token is visible ASCII (RFC 6750's b64token): said at start."""
    with pytest.raises(ConfigError, match="token"):
        ServeConfig(token=token).validate()


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


# ---- the hardening parts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, parsed", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)), ("LocalHost.", ("localhost", None)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("scans.lab", ("scans.lab", None)),
    ("::1", None), ("[::1", None), ("[nothost]:1", None), ("a b", None), ("x:99999", None), ("x:8o", None),
    ("", None), (":80", None), ("exa\u00efmple.org", None),
])
def test_split_host(value, parsed):
    from tumor_edge.serve.hosts import split_host

    assert split_host(value) == parsed


def test_host_rule_own_names_on_the_bound_port_and_allowed_names_on_any():
    from tumor_edge.serve.hosts import HostRule

    rule = HostRule.for_bind("127.0.0.1", 8000, ["Scans.Lab"])
    for ok in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "scans.lab:443", "SCANS.LAB"):
        assert rule.refusal(ok) is None, ok
    for bad in ("attacker.example:8000", "127.0.0.1:8001", "10.0.0.1:8000", "localhost.attacker.example"):
        status, reason = rule.refusal(bad)
        assert status == 421 and "--allow-host" in reason, bad
    assert rule.refusal(None)[0] == 400 and rule.refusal("x y")[0] == 400
    wildcard = HostRule.for_bind("0.0.0.0", 9000)
    assert wildcard.refusal("192.168.1.4:9000") is None and wildcard.refusal("[fe80::1]:9000") is None
    assert wildcard.refusal("myhost.lan:9000")[0] == 421  # a name needs --allow-host: it could be rebound
    assert HostRule.for_bind("192.168.1.4", 80).refusal("192.168.1.4") is None


@pytest.mark.parametrize("name", ["scans.lab", "10.0.0.7", "[fe80::1]", "ward-7_a"])
def test_allow_host_values(name):
    ServeConfig(allow_hosts=(name,)).validate()


@pytest.mark.parametrize("name", ["http://scans.lab", "scans.lab:8000", "", "a/b", "sc ans"])
def test_allow_host_values_refused(name):
    with pytest.raises(ConfigError, match="--allow-host"):
        ServeConfig(allow_hosts=(name,)).validate()


@pytest.mark.parametrize("text, folders, clean", [
    ("/srv/b un/model.onnx: bad", ["/srv/b un"], "model.onnx: bad"),
    ("/srv/bundle: model.onnx is a link", ["/srv/bundle"], "bundle: model.onnx is a link"),
    ("cannot open /home/u/.cache/te/abc.ort (x)", [], "cannot open abc.ort (x)"),
    ("C:\\Users\\u\\m.onnx: bad", [], "m.onnx: bad"),
    ("~/bundles/m.onnx failed", [], "m.onnx failed"),
    ("input/output 1/2 and N/A stay", [], "input/output 1/2 and N/A stay"),
])
def test_without_folders(text, folders, clean):
    from pathlib import Path

    from tumor_edge.serve.inference import without_folders

    assert without_folders(text, [Path(f) for f in folders]) == clean


def test_upload_stage_bounds_places_per_client_and_bytes():
    from tumor_edge.serve.admission import UploadStage

    async def scenario():
        stage = UploadStage(places=3, per_client=2, budget_bytes=100)
        async with stage.enter("a") as take_a, stage.enter("a"):
            with pytest.raises(Busy, match="your address"):
                async with stage.enter("a"):
                    pass
            async with stage.enter("b") as take_b:
                with pytest.raises(Busy, match="3 uploads"):
                    async with stage.enter("c"):
                        pass
                take_a(60)
                with pytest.raises(Busy, match="MiB"):
                    take_b(41)
                take_b(40)
                assert stage.bytes_held == 100 and stage.receiving == 3
        assert stage.bytes_held == 0 and stage.receiving == 0 and not stage.by_client

    asyncio.run(scenario())


def test_without_folders_leaves_a_longer_sibling_name_whole():
    from pathlib import Path

    from tumor_edge.serve.inference import without_folders

    assert without_folders("/tmp/x and /tmp/xyz/f.png", [Path("/tmp/x")]) == "x and f.png"
