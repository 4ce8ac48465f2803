"""The runtime reads bundles and never writes one: export is the only writer (tumor_edge.export.reference records
the reference outputs; tumor_edge.export writes models and metadata.json).

Two checks. Statically, no runtime module names a bundle writer (`record_reference`, `role_entry`,
`describe_file`, `describe_member`) or calls `.write(` on something named metadata: the import contract already
keeps tumor_edge.export out of the runtime, and this keeps the contracts' own writers out too. Dynamically, the
runtime's whole reading path on a real ONNX bundle (Bundle.check, verify with its measured choice, classify) runs
with `BundleMetadata.write` made to fail, and leaves every file of the bundle byte for byte and time for time as
it was.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

import tumor_edge.runtime as runtime
from tests.runtime.models import make_bundle, save_quadrant
from tumor_edge.contracts.bundle import BundleMetadata

RUNTIME = Path(runtime.__file__).parent
WRITERS = {"record_reference", "role_entry", "describe_file", "describe_member"}


def _writer_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.name if isinstance(node, ast.FunctionDef) else None)
        if name in WRITERS:
            found.append(f"{path.name}:{node.lineno}: {name}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "write"
                and "metadata" in ast.unparse(node.func.value).lower()):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
        if isinstance(node, ast.ImportFrom) and any(a.name in WRITERS for a in node.names):
            found.append(f"{path.name}:{node.lineno}: import from {node.module}")
    return found


def test_no_runtime_module_names_a_bundle_writer():
    found = [use for path in sorted(RUNTIME.rglob("*.py")) for use in _writer_uses(path)]
    assert not found, f"the runtime must not write bundles (export does): {found}"


def test_the_check_sees_a_writer(tmp_path):
    """The static check itself: a module that records references or writes metadata is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tumor_edge.export.reference import record_reference\n"
                   "def f(bundle_metadata, d):\n    bundle_metadata.write(d)\n    record_reference(d)\n")
    assert len(_writer_uses(bad)) == 3  # the import, the write, the call


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def test_the_reading_path_leaves_the_bundle_as_it_was(tmp_path, monkeypatch):
    from tumor_edge.cli import main
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime import Bundle, verify_bundle

    folder = make_bundle(tmp_path / "b")
    record_reference(folder)  # export's part: verify then has a reference to reproduce
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))  # the device cache, outside the bundle
    before = _snapshot(folder)

    def refuse(self, bundle_dir):
        raise AssertionError(f"the runtime wrote {bundle_dir}/metadata.json")

    monkeypatch.setattr(BundleMetadata, "write", refuse)
    Bundle.open(folder).check()
    report = verify_bundle(folder)
    assert report.ok, report.problems
    image = save_quadrant(tmp_path / "q1.png", 1)
    result = CliRunner().invoke(main, ["classify", str(image), "-m", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert _snapshot(folder) == before


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_the_runtime_api_offers_no_writer(name):
    assert name not in runtime.__all__
