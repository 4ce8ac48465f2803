"""`tumor-edge verify`: schema, integrity, reproduction of export's reference outputs, accuracy on local data."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.runtime.models import CLASSES, make_bundle, save_quadrant
from tumor_edge.cli import main
from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.export.reference import DEFAULT_COUNT, ROLE_VALUES_PER_FILE, record_reference
from tumor_edge.runtime.choice import brain_blobs
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.verify import verify_bundle


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def recorded(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    record_reference(bundle)
    return bundle


def _verify(*args):
    result = CliRunner().invoke(main, ["verify", *map(str, args)])
    assert "Traceback" not in result.output
    return result


def test_reference_images_are_the_same_on_every_machine():
    """A fixed digest: the generator must never change what a stored (name, seed) produces."""
    images = brain_blobs(1, 2, 32, 40)
    assert images.shape == (2, 32, 40, 3) and images.dtype == np.uint8
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "e78235ff43123f30b6d402bdd3919c470fce7116685ab3ae7db9195c323845e1")
    assert not np.array_equal(brain_blobs(2, 1, 32, 40)[0], images[0])
    assert 20 < images.mean() < 200 and images.std() > 20  # not blank: a head on a dark background


def test_record_reference_then_verify_passes(recorded):
    meta = BundleMetadata.read(recorded)
    assert meta.reference.count == DEFAULT_COUNT and len(meta.reference.outputs["model_fp32.onnx"]) == DEFAULT_COUNT
    assert meta.reference.machine["isa"]
    result = _verify(recorded)
    assert result.exit_code == 0, result.output
    assert "reproduce: ok  model_fp32.onnx: top-1 agreement 16/16" in result.stdout
    assert "all checks passed" in result.stdout and "research tool" in result.stderr


def test_other_devices_results_are_a_problem(recorded):
    data = json.loads((recorded / "metadata.json").read_text())
    rows = data["reference"]["outputs"]["model_fp32.onnx"]
    rows[3] = rows[3][::-1]  # as if the export machine had computed something else for image 3
    (recorded / "metadata.json").write_text(json.dumps(data))
    result = _verify(recorded)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not reproduce" in errors[0] and "model_fp32.onnx" in errors[0]


def test_tampered_model_fails_integrity(recorded):
    path = recorded / "model_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    result = _verify(recorded)
    assert result.exit_code == 1 and "sha256" in result.stderr and str(path) in result.stderr


def test_bundle_without_reference_or_with_bad_metadata(tmp_path):
    bundle = make_bundle(tmp_path / "old")
    result = _verify(bundle)
    assert result.exit_code == 1 and "no reference outputs recorded" in result.stderr
    (bundle / "metadata.json").write_text(json.dumps({"classes": "glioma", "preprocessing": {}}))
    result = _verify(bundle)
    assert result.exit_code == 1 and "'classes' must be a list" in result.stderr
    assert _verify(tmp_path / "nothing").exit_code == 1


def test_data_reproves_accuracy(recorded, tmp_path):
    data = tmp_path / "data"
    for q, name in enumerate(CLASSES):
        for i in range(2):
            save_quadrant(data / "Testing" / name / f"{i}.png", q)
    (data / "Testing" / "notumor" / "notes.txt").write_text("not a scan")
    os.mkfifo(data / "Testing" / "glioma" / "pipe.png")  # never opened: verify must not hang on it
    report = verify_bundle(recorded, data=data)
    assert report.ok, report.problems
    assert report.files["model_fp32.onnx"]["accuracy"] == 1.0 and report.files["model_fp32.onnx"]["n_images"] == 8

    meta = BundleMetadata.read(recorded)
    meta.metrics = {"parity": {"thresholds": {"max_accuracy_drop": 1.0},
                               "files": {"model_fp32.onnx": {"accuracy": 1.0}}}}
    meta.write(recorded)
    (data / "Testing" / "glioma").rename(data / "Testing" / "tmp")  # swap two labels: accuracy falls to 50 %
    (data / "Testing" / "meningioma").rename(data / "Testing" / "glioma")
    (data / "Testing" / "tmp").rename(data / "Testing" / "meningioma")
    result = _verify(recorded, "--data", data)
    assert result.exit_code == 1 and "accuracy 50.0% on 8 local scans (export measured 100.0%" in result.stderr

    (data / "Testing" / "other").mkdir()
    assert any("not classes of this bundle" in p for p in verify_bundle(recorded, data=data).problems)
    assert any("no labelled scans" in p for p in verify_bundle(recorded, data=tmp_path / "b").problems)


def test_data_counts_a_volume_as_one_scan_labelled_by_its_summary(recorded, tmp_path):
    """`verify --data` reads through the readers' registry: a NIfTI file and a DICOM series folder among the
    labelled scans are one scan each, scored by their volume summary's label."""
    pytest.importorskip("nibabel", reason="the `nifti` extra is not installed")
    pytest.importorskip("pydicom", reason="the `dicom` extra is not installed")
    from tests.runtime.volume_files import head, write_nifti, write_series

    data = tmp_path / "data"
    for q, name in enumerate(CLASSES):
        save_quadrant(data / name / "a.png", q)
    volumes = [write_nifti(data / "pituitary" / "head.nii.gz", head()), write_series(data / "pituitary" / "s", head())]
    clf = Classifier.from_bundle(recorded)
    assert [clf.classify(v).label for v in volumes] == ["pituitary", "pituitary"]  # the middle axial slice's
    report = verify_bundle(recorded, data=data)
    assert report.ok, report.problems
    assert report.files["model_fp32.onnx"]["n_images"] == 6 and report.files["model_fp32.onnx"]["accuracy"] == 1.0
    (data / "pituitary").rename(data / "tmp")  # the volumes now sit under glioma: both count as wrong
    (data / "glioma").rename(data / "pituitary")
    (data / "tmp").rename(data / "glioma")
    report = verify_bundle(recorded, data=data)
    assert report.files["model_fp32.onnx"]["accuracy"] == pytest.approx(2 / 6)


@pytest.fixture()
def heatmap_recorded(tmp_path):
    from tests.runtime.heatmap_models import make_heatmap_bundle

    bundle = make_heatmap_bundle(tmp_path / "hm", size=8)
    record_reference(bundle)
    return bundle


def test_reference_covers_every_output_role(heatmap_recorded):
    """Issue 12: verify re-proves the heatmap too, not only the class scores."""
    meta = BundleMetadata.read(heatmap_recorded)
    entry = meta.reference.roles["model_fp32.onnx"]["heatmap"]
    kept = ROLE_VALUES_PER_FILE // (8 * 8 * 4)  # the first images, as many as fit the per-file budget
    assert 1 <= kept <= DEFAULT_COUNT and entry["shape"] == [kept, 8, 8, 4] and len(entry["values"]) == kept * 256
    report = verify_bundle(heatmap_recorded)
    assert report.ok, report.problems
    assert report.files["model_fp32.onnx"]["roles"]["heatmap"]["relative_diff"] < 1e-6
    assert any("model_fp32.onnx heatmap: max |Δ|" in line and line.startswith("reproduce: ok") for line in report.lines)


def test_a_changed_heatmap_reference_is_a_problem(heatmap_recorded):
    data = json.loads((heatmap_recorded / "metadata.json").read_text())
    values = data["reference"]["roles"]["model_fp32.onnx"]["heatmap"]["values"]
    spread = max(values) - min(values)
    values[100] += 0.2 * spread  # as if the export machine's map differed in one cell by a fifth of its range
    (heatmap_recorded / "metadata.json").write_text(json.dumps(data))
    result = _verify(heatmap_recorded)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "heatmap" in errors[0] and "does not reproduce" in errors[0], errors
    assert "reproduce: ok  model_fp32.onnx: top-1 agreement 16/16" in result.stdout  # the scores still match


def test_bundle_recorded_with_scores_only_still_verifies(heatmap_recorded):
    data = json.loads((heatmap_recorded / "metadata.json").read_text())
    del data["reference"]["roles"]
    (heatmap_recorded / "metadata.json").write_text(json.dumps(data))
    result = _verify(heatmap_recorded)
    assert result.exit_code == 0, result.output
    assert "class scores only (outputs heatmap were not recorded" in result.stdout


def test_large_maps_keep_fewer_images(tmp_path):
    from tests.runtime.heatmap_models import make_heatmap_bundle

    bundle = make_heatmap_bundle(tmp_path / "big", size=48)  # 9216 numbers an image: one image is kept
    record_reference(bundle)
    assert BundleMetadata.read(bundle).reference.roles["model_fp32.onnx"]["heatmap"]["shape"] == [1, 48, 48, 4]
    assert verify_bundle(bundle).ok


@pytest.mark.parametrize("change, message", [
    (lambda r: r["roles"].update({"model_fp32.onnx": {"saliency": {"shape": [1], "values": [0.0]}}}),
     "not an output role"),
    (lambda r: r["roles"]["model_fp32.onnx"]["heatmap"].update(shape=[1, 8, 8, 4]), "as many finite numbers"),
    (lambda r: r["roles"]["model_fp32.onnx"]["heatmap"].update(shape=[99, 1]), "images <= 16"),
    (lambda r: r["roles"].update({"other.onnx": {}}), "which 'models' does not list"),
])
def test_bad_role_references_are_one_line_errors(heatmap_recorded, change, message):
    data = json.loads((heatmap_recorded / "metadata.json").read_text())
    change(data["reference"])
    (heatmap_recorded / "metadata.json").write_text(json.dumps(data))
    result = _verify(heatmap_recorded)
    assert result.exit_code == 1 and message in result.stderr, result.stderr


@pytest.fixture()
def two_files(tmp_path):
    """A recorded bundle listing two model files (the quadrant model as fp32, and a copy as a second file)."""
    import shutil

    from tests.runtime.models import describe_file

    bundle = make_bundle(tmp_path / "two")
    shutil.copy(bundle / "model_fp32.onnx", bundle / "model_fp16.onnx")
    meta = BundleMetadata.read(bundle)
    meta.models["model_fp16.onnx"] = describe_file(bundle / "model_fp16.onnx", "onnx", "fp16")
    meta.write(bundle)
    record_reference(bundle)
    return bundle


def test_a_file_not_copied_to_this_device_is_listed_once_and_does_not_fail(two_files):
    """Issue 19: a device sent only some of the bundle's files got "no model file ... (metadata lists it)" and
    exit 1. What it holds is proven; the rest is listed once as not checked, with the reason; --strict fails."""
    (two_files / "model_fp16.onnx").unlink()
    result = _verify(two_files)
    assert result.exit_code == 0, result.output
    assert "reproduce: ok  model_fp32.onnx" in result.stdout
    assert result.stdout.count("model_fp16.onnx") == 1
    assert "not checked here: model_fp16.onnx: not in this copy of the bundle" in result.stdout
    assert "1 model file checked; 1 not checked here" in result.stdout
    strict = _verify(two_files, "--strict")
    errors = [line for line in strict.stderr.splitlines() if line.startswith("error:")]
    assert strict.exit_code == 1 and len(errors) == 1 and "model_fp16.onnx: not checked here" in errors[0]


def test_a_present_file_that_fails_its_hash_still_fails(two_files):
    path = two_files / "model_fp16.onnx"
    data = bytearray(path.read_bytes())
    data[-50] ^= 0x01
    path.write_bytes(bytes(data))
    result = _verify(two_files)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "sha256" in errors[0] and str(path) in errors[0]
    assert len(set(result.output.splitlines())) == len(result.output.splitlines()), "a line printed twice"


def test_at_least_one_model_must_verify(two_files):
    (two_files / "model_fp16.onnx").unlink()
    (two_files / "model_fp32.onnx").unlink()
    result = _verify(two_files)
    assert result.exit_code == 1
    assert "no model of this bundle could be checked on this device" in result.stderr


def test_a_reduced_precision_file_is_allowed_its_recorded_effect_under_the_cap(two_files):
    """A device may compute an fp16 or int8 file in its own reduced-precision kernels, rounding as much as the
    export machine did but independently: the limit is EFFECT_FACTOR times the file's recorded difference from fp32,
    never under the precision's floor, never over the cap."""
    from tumor_edge.runtime.choice import CAP, EFFECT_FACTOR, FLOORS, tolerance_for

    meta = BundleMetadata.read(two_files)
    assert tolerance_for("model_fp32.onnx", meta) == FLOORS["fp32"].value
    assert tolerance_for("model_fp16.onnx", meta) == FLOORS["fp16"].value  # same outputs: the floor
    rows = [list(r) for r in meta.reference.outputs["model_fp16.onnx"]]
    rows[2][0] += 0.04  # as if fp16 rounding had moved one probability by 0.04 on the export machine
    rows[2][1] -= 0.04
    meta.reference.outputs["model_fp16.onnx"] = rows
    assert tolerance_for("model_fp16.onnx", meta) == pytest.approx(EFFECT_FACTOR * 0.04)
    rows[2][0] += 0.3
    rows[2][1] -= 0.3
    assert tolerance_for("model_fp16.onnx", meta) == CAP


@pytest.mark.parametrize("kind", ["collapsed", "permuted", "constant"])
def test_a_broken_int8_file_fails_whatever_its_recorded_error(tmp_path, kind):
    """A broken file reproduces itself perfectly on the device, and its recorded difference from fp32 (E, up to
    0.75 for a collapsed file) once widened the limit past any difference two probability vectors can have. The
    file's recorded labels against fp32's decide: it fails, and so does the bundle's verify."""
    from tests.runtime.models import add_file, broken_quadrant_model

    bundle = make_bundle(tmp_path / kind)
    add_file(bundle, broken_quadrant_model(kind, BundleMetadata.read(bundle)))
    record_reference(bundle)
    report = verify_bundle(bundle, choose=False)
    problems = [p for p in report.problems if "model_int8.onnx" in p]
    assert len(problems) == 1 and "recorded labels disagree with fp32's" in problems[0], report.problems
    assert not report.files["model_int8.onnx"].get("reproduced")
    assert report.files["model_fp32.onnx"]["reproduced"]


def test_the_tolerance_has_a_cap_no_recorded_error_lifts(tmp_path):
    from tests.runtime.models import add_file, broken_quadrant_model
    from tumor_edge.runtime.choice import CAP, tolerance_for

    bundle = make_bundle(tmp_path / "b")
    add_file(bundle, broken_quadrant_model("permuted", BundleMetadata.read(bundle)))
    record_reference(bundle)
    meta = BundleMetadata.read(bundle)
    assert tolerance_for("model_int8.onnx", meta) == CAP < 0.5
    result = _verify(bundle, "--tolerance", "0.9")
    assert result.exit_code == 2 and "0.9" in result.output  # an explicit tolerance stays under the cap too


def test_a_file_whose_parity_failed_never_passes(two_files):
    meta = BundleMetadata.read(two_files)
    meta.models["model_fp16.onnx"].extra["parity"] = "fail"
    meta.write(two_files)
    report = verify_bundle(two_files, choose=False)
    assert any("model_fp16.onnx" in p and "parity verdict is 'fail'" in p for p in report.problems), report.problems


def test_the_int8_floor_is_above_the_measured_cross_cpu_difference(tmp_path):
    """An int8 file moves by up to 0.076 between x86 and ARM64 on a healthy device: a record that differs from
    this device by that much still reproduces (the floor), and where the floor comes from is stated."""
    from tests.runtime.models import add_file

    bundle = make_bundle(tmp_path / "b")
    add_file(bundle, onnx.load(bundle / "model_fp32.onnx"))
    record_reference(bundle)
    meta = BundleMetadata.read(bundle)
    rows = np.asarray(meta.reference.outputs["model_int8.onnx"])
    rows[:, :2] += np.array([0.076, -0.076]) * np.where(rows[:, 1:2] > 0.076, 1, 0)  # as ARM64 computed it
    meta.reference.outputs["model_int8.onnx"] = rows.tolist()
    meta.write(bundle)
    report = verify_bundle(bundle, choose=False)
    assert report.ok, report.problems
    from tumor_edge.runtime.choice import FLOORS

    assert "ARM64" in FLOORS["int8"].source


def test_verify_says_where_each_floor_comes_from(recorded):
    from tumor_edge.runtime.choice import CAP, FLOORS

    result = _verify(recorded)
    assert f"reference: fp32 tolerance floor {FLOORS['fp32'].value:g} ({FLOORS['fp32'].source}), cap {CAP:g}" \
        in result.stdout
