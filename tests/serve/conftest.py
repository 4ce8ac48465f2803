"""Shared servers for the serve tests: one default server for the session (read-only use)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the `serve` extra is not installed")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed")

from tests.runtime.models import make_bundle  # noqa: E402
from tests.serve.process import running_server  # noqa: E402

CARD_TEXT = "# Quadrant test model\n\nResearch use only. Synthetic test model.\n"


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory) -> Path:
    """The quadrant bundle with a model card (the card is a bundle document, not a model file)."""
    from tumor_edge.contracts.bundle import MODEL_CARD

    folder = make_bundle(tmp_path_factory.mktemp("serve") / "bundle")
    (folder / MODEL_CARD).write_text(CARD_TEXT)
    return folder


@pytest.fixture(scope="session")
def server(serve_bundle, tmp_path_factory):
    """One server for the tests that only read: 1 MiB body limit so the 413 test stays small."""
    with running_server(tmp_path_factory.mktemp("server"), "--model", str(serve_bundle), "--max-body-mb", "1") as s:
        yield s
