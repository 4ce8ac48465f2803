"""Dataset discovery and checks: the one-line errors, skipped bad files, planted duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.toydata import make_toy_dataset
from tumor_edge.cli import main
from tumor_edge.data.dataset import discover, load_pixels, stratified_split
from tumor_edge.errors import DatasetError
from tumor_edge.runtime.preprocess import Preprocessing


@pytest.fixture()
def small_dataset(tmp_path) -> Path:
    return make_toy_dataset(tmp_path / "ds", train_per_class=6, test_per_class=3, size=64, seed=1)


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_discover_counts_and_sorted_classes(small_dataset):
    index = discover(small_dataset)
    assert index.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert len(index.train) == 24 and len(index.test) == 12
    assert index.counts()["Testing"]["pituitary"] == 3


def test_missing_split_is_one_line_error(small_dataset):
    shutil.rmtree(small_dataset / "Testing")
    result = run_cli("data", "check", str(small_dataset))
    assert result.exit_code == 1
    assert "missing split folder 'Testing/'" in result.output
    assert str(small_dataset) in result.output
    assert "Traceback" not in result.output


def test_class_folders_differ(small_dataset):
    (small_dataset / "Testing" / "pituitary").rename(small_dataset / "Testing" / "pituitry")
    with pytest.raises(DatasetError, match="only in Training: pituitary; only in Testing: pituitry"):
        discover(small_dataset)


def test_empty_class_in_training_is_fatal_in_testing_a_problem(small_dataset):
    for f in (small_dataset / "Testing" / "glioma").iterdir():
        f.unlink()
    index = discover(small_dataset)
    assert any("empty class folder" in p and "Testing/glioma" in p for p in index.problems)
    for f in (small_dataset / "Training" / "notumor").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="no training images for class\\(es\\): notumor"):
        discover(small_dataset)


def test_corrupt_files_listed_and_skipped_non_images_ignored(small_dataset):
    bad = small_dataset / "Training" / "glioma" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (small_dataset / "Training" / "glioma" / "notes.txt").write_text("not an image")
    empty = small_dataset / "Testing" / "meningioma" / "empty.png"
    empty.write_bytes(b"")
    result = run_cli("data", "check", str(small_dataset), "--no-duplicates")
    assert result.exit_code == 1
    assert f"problem: {bad}:" in result.output
    assert f"problem: {empty}: empty file (0 bytes)" in result.output
    assert "ignored 1 non-image file(s)" in result.output
    index = discover(small_dataset)
    loaded = load_pixels(index.train, Preprocessing(75, 75), show_progress=False)
    assert len(loaded.samples) == len(index.train) - 1
    assert len(loaded.failures) == 1 and str(bad) in loaded.failures[0]


def test_planted_duplicates_are_found(small_dataset):
    train_img = small_dataset / "Training" / "glioma" / "glioma_000.jpg"
    # an exact copy, and a re-encoded, resized near-copy, planted in Testing
    shutil.copy(train_img, small_dataset / "Testing" / "glioma" / "copy.jpg")
    Image.open(small_dataset / "Training" / "pituitary" / "pituitary_002.jpg").resize((90, 90)).save(
        small_dataset / "Testing" / "pituitary" / "near.png")
    result = run_cli("data", "check", str(small_dataset))
    assert result.exit_code == 0, result.output
    assert "duplicates: 2 test image(s) also in Training (1 byte-identical, 1 near-identical)" in result.output
    assert "copy.jpg" in result.output and "near.png" in result.output


def test_stratified_split_is_seeded_and_stratified(small_dataset):
    index = discover(small_dataset)
    a_keep, a_val = stratified_split(index.train, 0.34, seed=3)
    b_keep, b_val = stratified_split(index.train, 0.34, seed=3)
    assert a_val == b_val and len(a_keep) + len(a_val) == len(index.train)
    assert sorted(np.bincount([s.label for s in a_val]).tolist()) == [2, 2, 2, 2]
    assert not {s.path for s in a_keep} & {s.path for s in a_val}


def test_check_on_realistic_demo_data_is_clean(demo_dataset):
    """Held-out anatomy in Testing: no duplicates across splits, no problems, counts per class printed."""
    result = run_cli("data", "check", str(demo_dataset))
    assert result.exit_code == 0, result.output
    assert "duplicates: none between Training and Testing" in result.output
    assert "problem:" not in result.output
    index = discover(demo_dataset)
    assert index.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert all(n > 0 for split in index.counts().values() for n in split.values())
