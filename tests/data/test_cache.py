"""The pixel cache (decoded images on disk, read back by index) and the split leak report."""

from __future__ import annotations

import shutil

import numpy as np

from tumor_edge.data.dataset import build_pixel_cache, discover, stratified_split
from tumor_edge.data.dedup import find_split_leaks, without
from tumor_edge.runtime.preprocess import Preprocessing, load_resized


def test_cache_reads_back_exactly_what_the_runtime_decodes(toy_dataset, tmp_path):
    index = discover(toy_dataset)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    samples = index.train[:6] + [type(index.train[0])(bad, 1)] + index.train[6:9]
    spec = Preprocessing(40, 40, "bilinear", "none")
    cache = build_pixel_cache(samples, spec, tmp_path / "c" / "px.u8", show_progress=False)
    assert cache.count == 9 and len(cache.failures) == 1 and "broken.jpg" in cache.failures[0]
    assert (tmp_path / "c" / "px.u8").stat().st_size == 9 * 40 * 40 * 3
    kept = [s for s in samples if s.path != bad]
    assert [s.path for s in cache.samples] == [s.path for s in kept]
    np.testing.assert_array_equal(cache.labels, [s.label for s in kept])
    order = [8, 0, 3, 3]
    got = cache.read(order)
    for row, i in zip(got, order):
        np.testing.assert_array_equal(row, load_resized(kept[i].path, spec))
    chunks = list(cache.chunks(4))
    assert [start for start, _ in chunks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), cache.read(range(9)))


def test_validation_and_test_copies_of_training_images_are_reported_and_dropped(toy_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(toy_dataset, root)
    index = discover(root)
    train, val = stratified_split(index.train, 0.25, 0)
    # a resized copy of a training image in the validation part, a byte copy in Testing
    from PIL import Image

    src = train[0].path
    Image.open(src).resize((70, 70)).save(val[0].path)
    shutil.copy(train[1].path, root / "Testing" / src.parent.name / "planted.jpg")
    index = discover(root)
    leaks = find_split_leaks(train, val, index.test, show_progress=False)
    assert [p.test for p in leaks.val] == [val[0].path]
    assert [p.test.name for p in leaks.test] == ["planted.jpg"] and leaks.test[0].exact
    assert leaks.summary() == {"val_near_duplicates_of_train": 1, "test_near_duplicates_of_train": 1}
    assert len(without(val, leaks.val)) == len(val) - 1
    assert any("pass --dedup" in line for line in leaks.lines(dropped=False))
