"""README.md's architecture section says what the code does: its diagram is the import graph between parts
(tests/contracts/package_edges.py computes it with grimp, counting imports inside functions), and its folder table
names every part. Regenerate a stale diagram with `python -m tests.contracts.package_edges --write`."""

from __future__ import annotations

import re

import pytest

from tests.contracts.package_edges import README, layers, package_edges, readme_block, render


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return package_edges()


def test_the_readme_diagram_is_the_code_s_import_graph(edges):
    block = readme_block(README.read_text())
    assert block is not None, "README.md lost its package-edges markers"
    assert block == render(edges), "README's architecture diagram is stale: python -m tests.contracts.package_edges " \
                                   "--write"


def test_every_part_is_drawn_and_in_the_folder_table(edges):
    assert {"calibration", "serve", "envcmd", "signing", "modelside", "runtime", "export"} <= set(edges)
    text = README.read_text()
    section = text[text.index("## Architecture"):text.index("### Where to add things")]
    table = set(re.findall(r"^\| `tumor_edge/(\w+)` \|", section, re.M))
    assert table == set(edges), f"folder table: missing {sorted(set(edges) - table)}, " \
                                f"extra {sorted(table - set(edges))}"


def test_layers_put_every_arrow_downwards():
    edges = {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"a"}}
    assert layers(edges) == [["a"], ["b", "d"], ["c"]]
    drawn = render(edges).splitlines()
    assert drawn[0].startswith("layer 2  c") and drawn[-1].endswith("(no other part)")


def test_a_loop_between_parts_is_an_error():
    with pytest.raises(ValueError, match="loop"):
        layers({"a": {"b"}, "b": {"a"}})
