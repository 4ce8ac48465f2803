"""The demo's ground truth: each tumour image's recorded lesion mask lies where the lesion's pixels are.

Checked against the same scan rendered without its lesion (same seeds, same mass effect, `paint_lesion=False`):
the pixels that differ by 3 grey levels or more are the lesion's, and the recorded mask must cover them (IoU >= 0.8)
in the finished image's orientation: for a flipped scan, the mask before the flip must match
far worse, so a mask that missed the flip would fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.demo.manifest import read_manifest
from tumor_edge.data.dataset import discover
from tumor_edge.demo.anatomy import builtin_volumes, load_anatomy
from tumor_edge.demo.generate import MASK_DIR, DemoDataConfig, generate, lesion_mask
from tumor_edge.demo.scan import make_scan

mni = next((v for v in builtin_volumes() if v.name == "mni152"), None)
pytestmark = pytest.mark.skipif(mni is None, reason="nilearn's MNI152 template is not installed")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("class_name", ["glioma", "meningioma", "pituitary"])
def test_recorded_mask_is_where_the_planted_lesion_changed_the_pixels(class_name):
    anat = load_anatomy(mni)
    flipped_seen = False
    for index in range(4):
        seed = np.random.SeedSequence(0, spawn_key=(1, 0, index))
        scan = make_scan(anat, class_name, 128, seed)
        free = make_scan(anat, class_name, 128, np.random.SeedSequence(0, spawn_key=(1, 0, index)),
                         paint_lesion=False)
        assert free.lesion_mask is None
        mask = scan.lesion_mask
        assert mask is not None and mask.shape == scan.grey.shape and mask.dtype == bool and mask.any()
        changed = np.abs(scan.grey.astype(np.int16) - free.grey.astype(np.int16)) >= 3
        assert _iou(mask, changed) >= 0.8, (class_name, index)
        if scan.realism.flip_lr:
            flipped_seen = True
            assert _iou(mask[:, ::-1], changed) < _iou(mask, changed) - 0.2, (class_name, index)
    assert flipped_seen, "no flipped scan among the seeds: the flip was not checked"


def test_no_lesion_no_mask():
    scan = make_scan(load_anatomy(mni), "notumor", 64, np.random.SeedSequence(0, spawn_key=(1, 2, 0)))
    assert scan.lesion_mask is None


def test_dataset_writes_a_mask_per_tumour_image_outside_the_class_folders(tmp_path):
    root = tmp_path / "demo"
    generate(DemoDataConfig(root, per_class=2, size=48, seed=1, volumes=(mni.path,), builtin=False,
                            show_progress=False))
    index = discover(root)
    assert len(index.train) + len(index.test) == 8  # the masks are no images of any class
    assert not list((root / "Training").rglob("*.png")) and not list((root / "Testing").rglob("*.png"))
    for row in read_manifest(root):
        image = root / row["file"]
        mask = lesion_mask(root, image)
        if row["class"] == "notumor":
            assert mask is None and row["lesion_mask"] == "" and row["lesion_pixels"] == "0"
            continue
        assert row["lesion_mask"].startswith(f"{MASK_DIR}/")
        with Image.open(image) as img:
            assert mask is not None and mask.shape == (img.height, img.width)
        assert int(row["lesion_pixels"]) == int(mask.sum()) > 0
        assert np.array_equal(lesion_mask(root, row["file"]), mask)


def test_masks_are_found_from_a_relative_work_dir(tmp_path, monkeypatch):
    """The README's `tumor-edge demo` runs with a relative work dir: `discover` then gives relative paths, and
    every held-out tumour scan must still find its mask (the localisation stage measures nothing otherwise)."""
    from pathlib import Path

    from tumor_edge.demo.localisation import tumour_scans

    monkeypatch.chdir(tmp_path)
    root = Path("demo-workdir") / "demo-data"
    generate(DemoDataConfig(root, per_class=4, size=48, seed=1, volumes=(mni.path,), builtin=False,
                            show_progress=False))
    index = discover(root)
    tumour = [s for s in index.train + index.test if index.classes[s.label] != "notumor"]
    assert tumour and not any(Path(s.path).is_absolute() for s in tumour)
    for sample in tumour:
        mask = lesion_mask(root, sample.path)
        assert mask is not None and mask.any(), sample.path
        absolute = lesion_mask(root.resolve(), Path(sample.path).resolve())
        assert np.array_equal(mask, absolute)
        assert np.array_equal(lesion_mask(root.resolve(), sample.path), mask)
        assert np.array_equal(lesion_mask(root, Path(sample.path).relative_to(root)), mask)
    assert {name for _, name, _, _ in tumour_scans(root, per_class=1)} == {"glioma", "meningioma", "pituitary"}
