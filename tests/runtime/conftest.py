"""Fixtures shared by the runtime tests: small real ONNX bundles built with `onnx.helper` (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.models import make_bundle


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The quadrant-model bundle, shared by the whole session: read it, never change it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture()
def fresh_bundle(tmp_path) -> Path:
    """A quadrant-model bundle of the test's own, for tests that change files in it."""
    return make_bundle(tmp_path / "b")
