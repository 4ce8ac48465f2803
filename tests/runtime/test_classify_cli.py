"""`tumor-edge classify` through click's runner: outputs, defaults, exit codes, every kind of bad input."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.runtime.models import (
    CLASSES,
    make_bundle,
    png_bomb,
    quadrant_image,
    quadrant_metadata,
    quadrant_model,
    save_quadrant,
    write_dicom,
)
from tumor_edge import RESEARCH_NOTICE
from tumor_edge.cli import main
from tumor_edge.contracts.bundle import remember_last_bundle


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans") / "scans"
    for q in range(4):
        save_quadrant(folder / CLASSES[q] / f"case{q}.png", q)
    save_quadrant(folder / "nested" / "deeper" / "case5.jpg", 0, quality=95)
    return folder


@pytest.fixture()
def state(tmp_path, monkeypatch):
    """A private XDG state folder and no TUMOR_EDGE_MODEL, so tests never see the user's last bundle."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)
    return tmp_path / "state"


def run(*args: str):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


def test_table_output(bundle, scans, state):
    result = run(scans / "glioma" / "case0.png", "--model", bundle)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["file", "class", "prob"]
    assert row.split()[1] == "glioma" and str(scans / "glioma" / "case0.png") in row
    assert "meningioma" in row and "pituitary" in row  # the other classes follow
    assert result.stderr.count(RESEARCH_NOTICE) == 1


def test_folders_are_recursed_in_sorted_order(bundle, scans, state):
    result = run(scans, "--model", bundle, "--json")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["glioma", "meningioma", "glioma", "notumor", "pituitary"]
    assert rows[2]["file"].endswith("case5.jpg")
    assert result.stderr.count(RESEARCH_NOTICE) == 1  # once per run, not per file


def test_json_lines_and_top_k(bundle, scans, state):
    result = run(scans / "pituitary", "--model", bundle, "--json", "--top-k", "2")
    row = json.loads(result.stdout)
    assert row["label"] == "pituitary" and set(row["probabilities"]) == set(CLASSES)
    assert [k[0] for k in row["top_k"]][:1] == ["pituitary"] and len(row["top_k"]) == 2
    table = run(scans / "pituitary", "--model", bundle, "-k", "2").stdout.strip().splitlines()[1]
    assert table.count(",") == 0 and len(table.split()) == 5  # file, class, prob, one other (label prob)


def test_csv(bundle, scans, state):
    result = run(scans, "--model", bundle, "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", "frame", "label", "confidence", *CLASSES, "warnings", "error", "model_file",
                            "engine"]
    assert len(rows) == 5 and rows[3]["label"] == "notumor" and not any(r["error"] for r in rows)
    assert abs(sum(float(rows[0][c]) for c in CLASSES) - 1) < 1e-4


def test_json_and_csv_together_is_a_usage_error(bundle, scans, state):
    result = run(scans, "--model", bundle, "--csv", "--json")
    assert result.exit_code == 1 and "choose one" in result.stderr  # 1: nothing ran; 2 is "some files failed"
    bad_option = run(scans, "--model", bundle, "--top-k", "0")
    assert bad_option.exit_code == 1 and "--top-k" in bad_option.stderr


def test_default_model_from_environment_then_last_export(bundle, scans, state, monkeypatch, tmp_path):
    missing = run(scans)
    assert missing.exit_code == 1 and "no model given" in missing.stderr
    assert "Traceback" not in missing.output
    remember_last_bundle(bundle)
    assert (state / "tumor-edge" / "last_bundle").is_file()
    assert run(scans).exit_code == 0
    other = make_bundle(tmp_path / "env", name="model_int8.onnx")
    monkeypatch.setenv("TUMOR_EDGE_MODEL", str(other))
    assert run(scans / "glioma").exit_code == 0
    monkeypatch.setenv("TUMOR_EDGE_MODEL", str(tmp_path / "nowhere"))
    result = run(scans / "glioma")
    assert result.exit_code == 1 and "no such bundle" in result.stderr and "nowhere" in result.stderr


def test_model_file_in_bundle_and_lone_onnx(bundle, scans, state, tmp_path):
    assert run(scans, "-m", bundle / "model_fp32.onnx").exit_code == 0
    assert run(scans, "-m", bundle, "--model-file", "model_fp32.onnx").exit_code == 0
    result = run(scans, "-m", bundle, "--model-file", "model_int8.tflite")
    assert result.exit_code == 1 and "no model file model_int8.tflite" in result.stderr
    lone = tmp_path / "lone.onnx"
    onnx.save(quadrant_model(metadata=quadrant_metadata()), lone)
    assert json.loads(run(scans / "meningioma", "-m", lone, "--json").stdout)["label"] == "meningioma"


def test_multi_frame_dicom_says_which_frame(bundle, state, tmp_path):
    volume = np.stack([quadrant_image(q, grey=False).astype(np.uint16) * 10 for q in (0, 1, 3)])
    series = write_dicom(tmp_path / "series.dcm", volume)
    middle = run(series, "-m", bundle)
    assert "[frame 1 of 3]" in middle.stdout and "meningioma" in middle.stdout
    every = run(series, "-m", bundle, "--frames", "all", "--json")
    rows = [json.loads(line) for line in every.stdout.splitlines()]
    assert [(r["frame"], r["frames"], r["label"]) for r in rows] == [
        (0, 3, "glioma"), (1, 3, "meningioma"), (2, 3, "pituitary")]


def test_providers_fall_back_to_cpu_with_a_note(bundle, scans, state):
    result = run(scans / "glioma", "-m", bundle, "--providers", "CUDA,CPU", "--threads", "1")
    assert result.exit_code == 0
    assert "no CUDAExecutionProvider" in result.stderr and "CPUExecutionProvider" in result.stderr


# ---- bad input: each reported in one line naming the file, the batch goes on, exit code 2 ----------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file\n" * 10)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.fromarray(quadrant_image(0, 128)).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:400])
    png_bomb(folder / "bomb.png")
    write_dicom(folder / "nopixels.dcm", None, pixel_data=False)
    return {
        "missing": (folder / "missing.jpg", "no such file"),
        "empty": (folder / "empty.jpg", "empty file"),
        "text": (folder / "notes.jpg", "not an image file"),
        "truncated": (folder / "truncated.jpg", "truncated"),
        "bomb": (folder / "bomb.png", "too large to be a scan"),
        "nopixels": (folder / "nopixels.dcm", "no pixel data"),
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "bomb", "nopixels"])
def test_each_bad_file_is_reported_and_skipped(bundle, scans, state, bad_files, kind):
    path, words = bad_files[kind]
    good = scans / "glioma" / "case0.png"
    result = run(good, path, scans / "pituitary", "-m", bundle)
    assert result.exit_code == 2
    rows = result.stdout.strip().splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["glioma", "pituitary"]  # the batch went on
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and str(path) in errors[0] and words in errors[0]
    assert "1 of 3 files failed" in result.stderr
    assert "Traceback" not in result.output


def test_all_bad_files_in_one_batch_json(bundle, scans, state, bad_files):
    paths = [p for p, _ in bad_files.values()]
    result = run(*paths, scans / "notumor", "-m", bundle, "--json", "--batch-size", "2")
    assert result.exit_code == 2
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in paths] + [str(scans / "notumor" / "case2.png")]
    assert all("error" in r for r in rows[:-1]) and rows[-1]["label"] == "notumor"
    assert f"{len(paths)} of {len(paths) + 1} files failed" in result.stderr


def test_debug_shows_the_traceback_of_a_bad_file(bundle, bad_files, state):
    path, _ = bad_files["truncated"]
    result = CliRunner().invoke(main, ["--debug", "classify", str(path), "-m", str(bundle)])
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_bad_bundles_are_one_line_errors(tmp_path, scans, state):
    folder = tmp_path / "nometa"
    folder.mkdir()
    onnx.save(quadrant_model(), folder / "model_fp32.onnx")
    result = run(scans, "-m", folder)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {folder}: not a tumor-edge bundle: no metadata.json"
    shape = make_bundle(tmp_path / "shape", model_size=48)
    result = run(scans, "-m", shape)
    assert result.exit_code == 1 and "48x48 but its metadata says 32x32" in result.stderr
    assert "Traceback" not in result.output


def test_empty_folder_is_an_error(bundle, tmp_path, state):
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty", "-m", bundle)
    assert result.exit_code == 1 and "no scan files found" in result.stderr


# ---- volumes among scans: which folders are DICOM series (tests/runtime/test_volume.py has the rest) ---------


def test_dicom_folders_of_separate_images_stay_images(bundle, state, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "singles"
    for q in range(3):  # each its own series: three images, as before volumes existed
        path = write_dicom(folder / f"s{q}.dcm", quadrant_image(q, grey=False).astype(np.uint16))
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
    for q in range(2):  # no SeriesInstanceUID at all: never taken for a series
        write_dicom(tmp_path / "no_uid" / f"n{q}.dcm", quadrant_image(q, grey=False).astype(np.uint16))
    result = run(folder, tmp_path / "no_uid", "-m", bundle, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["glioma", "meningioma", "notumor", "glioma", "meningioma"]
    assert not any("summary" in r or "slice" in r for r in rows)


def test_a_series_found_while_walking_is_one_volume(bundle, scans, state, tmp_path):
    from tests.runtime.volume_files import head, write_series

    write_series(tmp_path / "study" / "t1", head()[:, :, :8])
    save_quadrant(tmp_path / "study" / "a.png", 3)
    result = run(tmp_path / "study", "-m", bundle)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()[1:]
    assert lines[0].split()[1] == "pituitary" and lines[0].startswith(str(tmp_path / "study" / "a.png"))
    assert lines[1].startswith(f"{tmp_path / 'study' / 't1'} [axial ")
    assert lines[2].startswith(f"{tmp_path / 'study' / 't1'} [volume: axial, 1 slice]")
