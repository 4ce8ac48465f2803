"""Demo data: real template anatomy, held-out anatomy, determinism, no global-statistics shortcut."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.demo.manifest import read_manifest
from tumor_edge.cli import main
from tumor_edge.data.dataset import discover
from tumor_edge.demo.anatomy import BUILTIN_VOLUMES, builtin_volumes
from tumor_edge.demo.generate import (
    DATASET_CARD,
    DemoDataConfig,
    generate,
    is_demo_dataset,
)
from tumor_edge.demo.scan import PLANE_NAMES, slab_thresholds
from tumor_edge.errors import DatasetError, OutputExistsError

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]

mni = next((v for v in builtin_volumes() if v.name == "mni152"), None)
pytestmark = pytest.mark.skipif(mni is None, reason="nilearn's MNI152 template is not installed")


@pytest.fixture(scope="module")
def second_volume(tmp_path_factory) -> Path:
    """A different 'subject': the MNI152 brain resampled to 1.5 mm, shrunk 8 %, dimmed, written as NIfTI."""
    import nibabel as nib
    from scipy import ndimage as ndi

    img = nib.load(str(mni.path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    small = ndi.zoom(data, 0.92 / 1.5, order=1) * 0.7
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    path = tmp_path_factory.mktemp("vol") / "subject2.nii.gz"
    nib.save(nib.Nifti1Image(small.astype(np.float32), affine), str(path))
    return path


@pytest.fixture(scope="module")
def two_volume_set(tmp_path_factory, second_volume) -> Path:
    root = tmp_path_factory.mktemp("two") / "demo"
    generate(DemoDataConfig(root, per_class=8, size=64, seed=3, volumes=(mni.path, second_volume), builtin=False,
                            show_progress=False))
    return root


def _images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_layout_counts_card_and_manifest(two_volume_set):
    index = discover(two_volume_set)
    assert index.classes == CLASSES and not index.problems and not index.ignored
    counts = index.counts()
    assert all(counts["Training"][c] == 6 and counts["Testing"][c] == 2 for c in CLASSES)
    card = (two_volume_set / DATASET_CARD).read_text()
    assert card.lower().count("synthetic") >= 2 and "seed 3" in card and "tumor-edge train" in card
    assert "subject2" in card and "mni152" in card
    assert is_demo_dataset(two_volume_set)
    rows = read_manifest(two_volume_set)
    assert sorted(r["file"] for r in rows) == sorted(_images(two_volume_set))
    assert {r["plane"] for r in rows} <= set(PLANE_NAMES)
    for path in list(two_volume_set.rglob("*.jpg"))[:5]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 40 <= im.width <= 90 and 40 <= im.height <= 110


def test_testing_comes_from_a_volume_training_never_saw(two_volume_set, second_volume, tmp_path):
    rows = read_manifest(two_volume_set)  # default: the first volume is held out
    assert {r["volume"] for r in rows if r["split"] == "Testing"} == {"mni152"}
    assert {r["volume"] for r in rows if r["split"] == "Training"} == {"subject2"}
    other = tmp_path / "other"
    generate(DemoDataConfig(other, per_class=2, size=48, seed=0, builtin=False, volumes=(mni.path, second_volume),
                            test_volume="subject2", show_progress=False))
    rows = read_manifest(other)
    assert {r["volume"] for r in rows if r["split"] == "Testing"} == {"subject2"}
    assert {r["volume"] for r in rows if r["split"] == "Training"} == {"mni152"}


def test_lesions_sit_where_each_tumour_type_grows(two_volume_set):
    """Manifest lesion centres (MNI-like mm): pituitary at the sella midline, glioma in a hemisphere."""
    rows = read_manifest(two_volume_set)
    for r in rows:
        if r["class"] == "notumor":
            assert r["lesion_x"] == ""
            continue
        x, y, z = float(r["lesion_x"]), float(r["lesion_y"]), float(r["lesion_z"])
        if r["class"] == "pituitary":
            assert abs(x) < 6 and -6 < y < 14 and -40 < z < -18, r
        elif r["class"] == "glioma":
            assert abs(x) >= 4, r
        assert float(r["lesion_radius_mm"]) > 3


def test_same_seed_same_files_other_seed_other_files(tmp_path, second_volume):
    kwargs = dict(per_class=3, size=48, volumes=(mni.path, second_volume), builtin=False, show_progress=False)
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        generate(DemoDataConfig(tmp_path / name, seed=seed, **kwargs))
    a, b, c = (_images(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_one_volume_holds_out_a_slab_of_slice_positions(tmp_path):
    config = DemoDataConfig(out=tmp_path / "one", per_class=8, size=48, seed=5, volumes=(mni.path,),
                            builtin=False, show_progress=False)
    generate(config)
    root = config.out
    from tumor_edge.demo.anatomy import load_anatomy

    limits = slab_thresholds(load_anatomy(mni), config.test_fraction, seed=config.seed)
    for r in read_manifest(root):
        pos = float(r["slice_mm"])
        pos = abs(pos) if r["plane"] == "sagittal" else pos
        # the manifest rounds to 0.1 mm
        if r["split"] == "Testing":
            assert pos >= limits[r["plane"]] - 0.06, r
        else:
            assert pos < limits[r["plane"]] + 0.06, r
    assert "slab of slice positions" in (root / DATASET_CARD).read_text()


def _global_stats(root: Path) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for path in sorted(root.rglob("*.jpg")):
        grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        feats.append([grey.mean(), grey.std(), grey.shape[0], grey.shape[1], path.stat().st_size])
        labels.append(CLASSES.index(path.parent.name))
    return np.array(feats), np.array(labels)


def _cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


def test_global_image_statistics_do_not_give_the_class_away(tmp_path):
    root = tmp_path / "stats"
    generate(DemoDataConfig(root, per_class=50, size=64, seed=21, show_progress=False))
    x, y = _global_stats(root)
    accuracy = _cv_accuracy(x, y)
    assert accuracy < 0.40, f"mean/std/size/file size predict the class: {accuracy:.2f} (chance 0.25)"
    # The check has power: one class drawn 20 % wider (as a careless generator might) is caught.
    biased = x.copy()
    biased[y == 1, 3] *= 1.2
    assert _cv_accuracy(biased, y) > accuracy + 0.1


def test_refuses_to_overwrite_without_force(tmp_path, second_volume):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    kwargs = dict(per_class=2, size=48, seed=0, volumes=(second_volume,), builtin=False, show_progress=False)
    with pytest.raises(OutputExistsError, match="--force"):
        generate(DemoDataConfig(out, **kwargs))
    generate(DemoDataConfig(out, force=True, **kwargs))
    assert (out / "mine.txt").read_text() == "user data" and is_demo_dataset(out)
    assert not (tmp_path / ".out.partial").exists()


def test_cli_writes_data_and_reports_bad_input_in_one_line(tmp_path, second_volume):
    runner = CliRunner()
    result = runner.invoke(main, ["demo-data", str(tmp_path / "d"), "--per-class", "2", "--size", "48",
                                  "--no-builtin", "--volume", str(second_volume)])
    assert result.exit_code == 0, result.output
    assert "Testing from a held-out slab" in result.output and (tmp_path / "d" / "Training").is_dir()

    bad = tmp_path / "not_a_volume.nii.gz"
    bad.write_bytes(b"this is not NIfTI")
    result = runner.invoke(main, ["demo-data", str(tmp_path / "e"), "--volume", str(bad)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not_a_volume.nii.gz" in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "e").exists()

    result = runner.invoke(main, ["demo-data", str(tmp_path / "f"), "--volume", str(tmp_path / "missing.nii")])
    assert result.exit_code != 0 and "missing.nii: volume file not found" in result.output


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="test-volume"):
        generate(DemoDataConfig(tmp_path / "x", per_class=2, size=48, seed=0, volumes=(mni.path,),
                                test_volume="nope", show_progress=False))


def test_generation_never_imports_tensorflow(tmp_path):
    code = ("import sys; from pathlib import Path; from tumor_edge.demo.generate import DemoDataConfig, generate;"
            f"generate(DemoDataConfig(Path({str(tmp_path / 'g')!r}), per_class=2, size=48, seed=0, "
            "show_progress=False)); bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_builtin_registry_names_are_what_the_card_uses():
    assert set(BUILTIN_VOLUMES) == {"mni152", "colin27"}
    assert all(v.path.is_file() for v in builtin_volumes())
