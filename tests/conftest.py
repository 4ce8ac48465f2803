"""Shared, expensive fixtures: generate data once, train once, export once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.toydata import make_toy_dataset  # noqa: E402


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """ROOT/Training/<class>/*.jpg and ROOT/Testing/<class>/*.jpg, four classes, 80 px, learnable."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")
