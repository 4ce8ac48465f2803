"""Volumes in `classify`: NIfTI files and DICOM series folders, sliced the way the demo's training scans were cut.

Real files (nibabel, pydicom) through the real runtime and the quadrant model: the bright octant of the test head
(tests/runtime/volume_files.py) must land in the quadrant each plane's convention says, whatever voxel order the
file stores; slice choices, the volume summary, caps and hostile files are checked through `classify` itself.
"""

from __future__ import annotations

import csv
import io
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.runtime.volume_files import (
    BOX,
    CENTRE,
    head,
    stored_form,
    write_nifti,
    write_raw_nifti,
    write_series,
)
from tumor_edge import RESEARCH_NOTICE
from tumor_edge.cli import main
from tumor_edge.runtime.volume import closest_ras, pick_slices, summarise


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    stored, affine = stored_form(head())
    return {
        "ras": write_nifti(root / "ras.nii.gz", head()),
        "turned": write_nifti(root / "turned.nii", stored, affine),  # LPS-ish order, 2 mm slices
        "series": write_series(root / "series", head()),
        "root": root,
    }


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def run(*args):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


def json_rows(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


# ---- orientation: the octant lands where each plane's convention puts it ----------------------------------------


def test_closest_ras_matches_nibabel():
    rng = np.random.default_rng(0)
    for _ in range(100):
        affine = np.eye(4)
        affine[:3, :3] = rng.normal(size=(3, 3))
        assert np.array_equal(closest_ras(affine[:3, :3]), nib.orientations.io_orientation(affine).astype(int))


@pytest.mark.parametrize("name", ["ras", "turned", "series"])
@pytest.mark.parametrize(("axis", "upper", "expected"), [
    ("axial", 2, "meningioma"),  # anterior at the top, the patient's left on the right: top-right
    ("coronal", 1, "meningioma"),  # superior at the top, left on the right: top-right
    ("sagittal", 0, "glioma"),  # superior at the top, anterior on the left: top-left
])
def test_octant_lands_in_the_conventional_quadrant(bundle, volumes, state, name, axis, upper, expected):
    result = run(volumes[name], "-m", bundle, "--axis", axis, "--slices", "all", "--json")
    assert result.exit_code == 0, result.output
    rows = json_rows(result)
    slices, summary = rows[:-1], rows[-1]
    lo, hi = BOX[upper]
    assert [r["slice"] for r in slices] == list(range(lo, hi))  # every slice that holds tissue, RAS order
    assert all(r["axis"] == axis and r["slice_count"] > hi for r in slices)
    # Slices through the octant's side (left is low x in RAS: sagittal slices below the centre; superior and
    # anterior are high z and y) show it in the expected quadrant.
    through = [r for r in slices if (r["slice"] < CENTRE[0] - 1 if upper == 0 else r["slice"] > CENTRE[upper] + 1)]
    assert through and all(r["label"] == expected for r in through), [(r["slice"], r["label"]) for r in through]
    assert summary["summary"] == "volume" and summary["label"] == expected
    assert set(summary["supporting_slices"]) >= {r["slice"] for r in through}
    assert summary["slices"] == [r["slice"] for r in slices] and summary["notice"] == RESEARCH_NOTICE


# ---- slice choice ------------------------------------------------------------------------------------------------


def test_pick_slices():
    assert pick_slices("middle", 4, 28) == [15]
    assert pick_slices(3, 4, 28) == [4, 16, 27]
    assert pick_slices(1, 4, 28) == [15]
    assert pick_slices(100, 4, 8) == [4, 5, 6, 7]
    assert pick_slices("all", 4, 8) == [4, 5, 6, 7]


def test_slices_spread_over_the_brain_not_the_empty_ends(bundle, volumes, state):
    rows = json_rows(run(volumes["ras"], "-m", bundle, "--slices", "3", "--json"))
    assert [r["slice"] for r in rows[:-1]] == [4, 16, 27] and rows[-1]["slices"] == [4, 16, 27]
    middle = json_rows(run(volumes["ras"], "-m", bundle, "--json"))
    assert [r["slice"] for r in middle[:-1]] == [15] and middle[0]["slice_count"] == 32
    bad = run(volumes["ras"], "-m", bundle, "--slices", "zero")
    assert bad.exit_code == 1 and "--slices" in bad.stderr


# ---- output: text, JSON, CSV ---------------------------------------------------------------------------------


def test_table_and_csv_rows_and_summary(bundle, volumes, state, tmp_path):
    table = run(volumes["turned"], "-m", bundle, "--slices", "3")
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert lines[1].startswith(f"{volumes['turned']} [axial 4/32]")
    summary = lines[-1]
    assert f"{volumes['turned']} [volume: axial, 3 slices]" in summary and "meningioma" in summary
    assert "meningioma in axial slices 27 (1 of 3)" in summary and RESEARCH_NOTICE in summary
    constant = tmp_path / "flat.png"  # a constant image: its warning goes to the CSV's warnings column
    Image.new("RGB", (40, 40), (90, 90, 90)).save(constant)
    result = run(constant, volumes["ras"], "-m", bundle, "--slices", "3", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[-4:] == ["warnings", "error", "model_file", "engine"]
    assert "blank or constant image" in rows[0]["warnings"]
    assert [r["frame"] for r in rows[1:4]] == ["axial 4/32", "axial 16/32", "axial 27/32"]
    assert rows[4]["frame"].startswith("volume: axial, 3 slices; ") and rows[4]["warnings"] == RESEARCH_NOTICE
    assert abs(sum(float(rows[4][c]) for c in ("glioma", "meningioma", "notumor", "pituitary")) - 1) < 1e-4


def test_summary_rule():
    classes = ["glioma", "meningioma", "notumor", "pituitary"]

    def probs(label, p=0.7):
        rest = (1 - p) / 3
        return {c: (p if c == label else rest) for c in classes}

    many = [(i, probs("notumor"), "notumor") for i in range(9)] + [(9, probs("glioma", 0.9), "glioma")]
    one_stray = summarise("v", "axial", classes, many, 10)
    assert one_stray.label == "notumor" and one_stray.supporting == tuple(range(9))
    enough = [(i, probs("notumor"), "notumor") for i in range(8)] + [(8 + i, probs("glioma"), "glioma")
                                                                      for i in range(2)]
    assert summarise("v", "axial", classes, enough, 10).label == "glioma"  # 2 of 10 = 20 %
    assert summarise("v", "axial", classes, [(3, probs("pituitary"), None)], 10).label is None  # abstained


# ---- caps and hostile files: one line each, naming the file; the batch goes on --------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    whole = (root / "whole.nii.gz")
    write_nifti(whole, head())
    truncated = root / "truncated.nii.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    nan = head(np.float32)
    nan[:] = np.nan
    mixed = write_series(root / "mixed_sizes", head()[:, :, :6], sizes=[(44, 40)] * 5 + [(30, 30)])
    two = write_series(root / "two_series", head()[:, :, :4], description="T1")
    write_series(two, head()[:, :, :3] * 2, description="FLAIR", prefix="flair")
    return {
        "truncated": (truncated, "truncated or corrupt"),
        "2-D": (write_nifti(root / "flat.nii", np.ones((20, 20), np.int16)), "not a 3-D volume"),
        "5-D": (write_nifti(root / "five.nii", np.ones((4, 4, 4, 2, 2), np.int16)), "5-D"),
        "zero": (write_raw_nifti(root / "zero.nii", (20, 0, 20)), "zero-size dimension"),
        "huge": (write_raw_nifti(root / "huge.nii", (4000, 4000, 4000), np.float32), "volume too large"),
        "nan": (write_nifti(root / "nan.nii.gz", nan), "no finite voxel values"),
        "mixed sizes": (mixed, "different image sizes"),
        "extensions": (write_raw_nifti(root / "offset.nii.gz", (8, 8, 8), vox_offset=2e9, gz=True),
                       "bytes into the file"),
        "voxel sizes": (write_nifti(root / "needle.nii", head(), np.diag([0.001, 50.0, 1.0, 1.0])),
                        "make axial slices of"),
        "two series": (two, "holds 2 DICOM series (series 3 'T1' (4 files); series 3 'FLAIR' (3 files))"),
    }


@pytest.mark.parametrize("kind", ["truncated", "2-D", "5-D", "zero", "huge", "nan", "mixed sizes", "two series",
                                  "voxel sizes", "extensions"])
def test_hostile_volume_is_one_line_and_the_batch_goes_on(bundle, volumes, state, hostile, kind):
    path, words = hostile[kind]
    result = run(path, volumes["ras"], "-m", bundle, "--json")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], errors
    rows = json_rows(result)
    assert rows[0]["file"] == str(path) and "error" in rows[0]
    assert rows[-1]["summary"] == "volume" and rows[-1]["file"] == str(volumes["ras"])  # the batch went on
    assert "Traceback" not in result.output


def test_huge_header_is_refused_before_reading_voxels(hostile):
    from tumor_edge.errors import InputImageError
    from tumor_edge.runtime.readers import read_scan

    path, _ = hostile["huge"]
    assert path.stat().st_size < 1024  # 256 GB claimed, a few hundred bytes present: refused from the header
    with pytest.raises(InputImageError, match="decodes to 256000000000 bytes"):
        read_scan(path)


def test_some_nan_voxels_warn_and_classify(bundle, state, tmp_path):
    data = head(np.float32)
    data[0, 0, :4] = np.nan
    data[1, 0, 0] = np.inf
    result = run(write_nifti(tmp_path / "some_nan.nii.gz", data), "-m", bundle)
    assert result.exit_code == 0, result.output
    assert "5 of 56320 voxels are NaN or infinite; they are shown black" in result.stderr
    assert "[volume: axial, 1 slice]" in result.stdout


@pytest.mark.parametrize("form", ["monochrome1", "rescaled per file", "4-D"])
def test_stored_forms_give_the_same_volume(bundle, volumes, state, tmp_path, form):
    """MONOCHROME1 (inverted by the reader), a modality LUT that differs per file, and the first volume of a 4-D
    NIfTI all give back the plain test head: the same probabilities, slice for slice."""
    if form == "monochrome1":
        path, plain = write_series(tmp_path / "m1", 500 - head(np.int32), photometric="MONOCHROME1"), "series"
    elif form == "rescaled per file":
        path = write_series(tmp_path / "lut", head(), rescale=[(2.0, -100.0) if k % 2 else (0.5, -10.0)
                                                                for k in range(head().shape[2])])
        plain = "series"
    else:
        path, plain = write_nifti(tmp_path / "four.nii.gz", np.stack([head(), head()[::-1]], axis=-1)), "ras"
    result = run(path, "-m", bundle, "--slices", "all", "--json")
    assert result.exit_code == 0, result.output
    rows, reference = json_rows(result), json_rows(run(volumes[plain], "-m", bundle, "--slices", "all", "--json"))
    assert len(rows) == len(reference) and rows[-1]["label"] == "meningioma"
    for row, ref in zip(rows, reference):
        assert row.get("slice") == ref.get("slice")
        assert all(abs(row["probabilities"][c] - ref["probabilities"][c]) < 1e-5 for c in ref["probabilities"])
    if form == "4-D":
        assert "a 4-D series of 2 volumes; classifying the first" in result.stderr


def test_axis_choices_are_the_plane_table():
    """`classify` imports only click at load time, so its --axis choices are written out: they must be PLANES'."""
    from tumor_edge.runtime.commands import classify
    from tumor_edge.runtime.volume import AXES

    (axis,) = [p for p in classify.params if p.name == "axis"]
    assert tuple(axis.type.choices) == AXES
