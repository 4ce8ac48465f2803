"""Names that others chose reach the server's terminal and its answers through the one escaping rule: class names
in the start-up banner, an upload's file name in the JSON the page shows."""

from __future__ import annotations

from tests.runtime.models import save_quadrant
from tests.serve.models import named_classes_bundle
from tests.serve.process import multipart, request, running_server
from tests.test_text import HOSTILE_CLASSES, raw_controls
from tumor_edge.errors import one_line


def test_the_banner_shows_class_names_escaped(tmp_path):
    bundle = named_classes_bundle(tmp_path / "bundle", HOSTILE_CLASSES)
    with running_server(tmp_path / "run", "--model", str(bundle)) as server:
        banner = next(line for line in server.stderr().splitlines() if line.startswith("serving "))
        log = server.stderr()
    assert raw_controls(log) == [], log
    assert f"({', '.join(map(one_line, HOSTILE_CLASSES))})" in banner


def test_an_upload_name_is_shown_escaped(server, tmp_path):
    name = "scan\x9b2J\u202egnp\x1b.png"
    body, headers = multipart(name, save_quadrant(tmp_path / "scan.png", 1).read_bytes())
    reply = request(server.url + "/v1/classify", "POST", body, headers)
    assert reply.status == 200, reply.body
    assert reply.json()["file"] == one_line(name)
