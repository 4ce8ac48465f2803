"""The one escaping rule (tumor_edge.errors.one_line) and the surfaces that show names through it: classify's table and
`--csv` on stdout, and the `error:` line. Names carry ESC sequences, a C1 CSI (U+009B), a right-to-left override
(U+202E) and newlines; what reaches the terminal carries none of them raw."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.runtime.models import save_quadrant
from tests.serve.models import named_classes_bundle
from tumor_edge.cli import main
from tumor_edge.errors import one_line

# Every character a name must not carry raw onto a terminal: C0 but for none, DEL, C1, bidi controls, separators.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
HOSTILE_CLASSES = ["glio\x1b]0;owned\x07ma", "mening\x9b31mioma", "no\u202etumor", "pitu\nitary"]
HOSTILE_SCAN = "scan\x1b[2J\u202egnp\x9b\nname.png"


def raw_controls(text: str) -> list[str]:
    """The control characters in `text`, newlines between output lines excepted."""
    return RAW.findall(text)


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("csi\x9b2J", "csi\\x9b2J"),
    ("next\x85line", "next\\x85line"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    ("\u2066iso\u2069 \u200e\u200f", "\\u2066iso\\u2069 \\u200e\\u200f"),
    ("two\nlines\r\tand\u2028more", "two\\nlines\\r\\tand\\u2028more"),
    ("del\x7f nul\x00", "del\\x7f nul\\x00"),
    ("scan\udcff\udcfe.png", "scan\\xff\\xfe.png"),  # undecodable file-name bytes
    ("glioma é 脑 ✓", "glioma é 脑 ✓"),  # printable text is left alone
    (None, "<array>"),
])
def test_one_rule_escapes_every_control(text, shown):
    assert one_line(text) == shown
    assert one_line(Path("/a") / "b\nc") == "/a/b\\nc"


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory) -> Path:
    return named_classes_bundle(tmp_path_factory.mktemp("hostile") / "bundle", HOSTILE_CLASSES)


@pytest.fixture()
def hostile_scan(tmp_path) -> Path:
    return save_quadrant(tmp_path / HOSTILE_SCAN, 1)


def classify(*args: object):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_user_model(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def test_the_table_shows_names_escaped_in_every_column(hostile_bundle, hostile_scan):
    result = classify("-m", hostile_bundle, hostile_scan)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and raw_controls(result.stdout) == []
    row = lines[1]
    assert one_line(str(hostile_scan)) in row
    assert one_line(HOSTILE_CLASSES[1]) in row  # the label
    assert all(one_line(c) in row for c in (HOSTILE_CLASSES[0], HOSTILE_CLASSES[2], HOSTILE_CLASSES[3]))  # others


def test_csv_cells_show_names_escaped_and_still_guard_formulas(hostile_bundle, hostile_scan, monkeypatch):
    monkeypatch.chdir(hostile_scan.parent)
    formula = save_quadrant(hostile_scan.parent / "=cmd\x1b.png", 2)
    result = classify("-m", hostile_bundle, "--csv", "--", hostile_scan.name, formula.name)
    assert result.exit_code == 0, result.stderr
    assert raw_controls(result.stdout) == []
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [row["file"] for row in rows] == [one_line(HOSTILE_SCAN), "'=cmd\\x1b.png"]
    assert rows[0]["label"] == one_line(HOSTILE_CLASSES[1])
    assert list(rows[0])[4:8] == [one_line(c) for c in HOSTILE_CLASSES]


def test_a_newline_in_a_bundle_path_does_not_split_the_error_line(tmp_path, hostile_scan):
    result = classify("-m", tmp_path / "two\nlines\x1b[2J" / "bundle", hostile_scan)
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and raw_controls(result.stderr) == []
    assert errors[0].startswith(f"error: {tmp_path}/two\\nlines\\x1b[2J/bundle")
