"""Hostile input to `classify` and the decoders: special files, bombs, permissions, names that break CSV,
terminals and encodings, write errors, degenerate images and models. Files are generated here
(tests/runtime/hostile.py), never committed.

Hangs are caught by running the command in a real process with a timeout, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.runtime.hostile import (
    animated_gif,
    classify_command,
    deflated_dicom_bomb,
    dicom_claiming,
    make_device_link,
    make_fifo,
    make_socket,
    nan_bundle,
    run_classify,
    unprivileged_runner,
    within,
    world_readable_folder,
)
from tests.runtime.models import make_bundle, quadrant_image, save_quadrant, write_dicom
from tumor_edge.cli import main
from tumor_edge.errors import InputImageError, one_line
from tumor_edge.runtime.preprocess import is_scan_file, load_rgb, load_rgb_frames, scan_inputs
from tumor_edge.runtime.readers.base import MAX_DECODED_BYTES
from tumor_edge.runtime.readers.pillow import to_uint8


@pytest.fixture(autouse=True)
def _no_user_model(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def cli(*args):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- special files are never opened ------------------------------------------------------------------------


def test_special_files_in_a_scanned_folder_never_hang_the_batch(bundle, tmp_path):
    folder = tmp_path / "scans"
    save_quadrant(folder / "a.png", 0)
    make_fifo(folder / "IM0002")  # suffix-less: opening it to look for the DICOM marker would block
    make_fifo(folder / "pipe.jpg")
    make_socket(folder / "sock")
    make_device_link(folder / "IM0003")  # -> /dev/zero: reading never ends
    save_quadrant(folder / "z.png", 3)
    result = run_classify(folder, "-m", bundle, "--json", timeout=60, text=True)
    assert result.returncode == 2, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("label") for r in rows if "label" in r] == ["glioma", "pituitary"]
    lines = errors(result.stderr)
    assert len(lines) == 4 and "Traceback" not in result.stderr
    for name, words in [("IM0002", "named pipe"), ("pipe.jpg", "named pipe"), ("sock", "socket"),
                        ("IM0003", "character device")]:
        assert any(str(folder / name) in line and words in line for line in lines), (name, lines)


def test_special_files_named_directly_are_named_for_what_they_are(tmp_path):
    fifo = make_fifo(tmp_path / "scan.png")
    device = make_device_link(tmp_path / "scan.dcm")
    with pytest.raises(InputImageError, match="named pipe"):  # named as what it is, not "empty file"
        within(10, load_rgb, fifo)
    with pytest.raises(InputImageError, match="character device"):
        within(10, load_rgb, device)
    assert within(10, is_scan_file, make_fifo(tmp_path / "IM0001")) is False


# ---- caps count decoded bytes, for every decoder -------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_bomb(tmp_path_factory):
    return deflated_dicom_bomb(tmp_path_factory.mktemp("bomb") / "bomb.dcm")


def test_deflated_dicom_bomb_is_refused_before_it_inflates(dicom_bomb):
    assert dicom_bomb.stat().st_size < 2_000_000  # under 2 MB on disk, 288 MB of pixels
    tracemalloc.start()
    try:
        with pytest.raises(InputImageError, match="too large to be a scan|decompression bomb"):
            load_rgb(dicom_bomb)  # refused from its header, before a pixel is decoded
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # inflated in chunks and thrown away, never held


def test_dicom_decoded_bytes_count_frames(tmp_path):
    """8000x8000 is under the pixel cap, but three 16-bit frames of it are 384 MB: refused from the header."""
    path = dicom_claiming(tmp_path / "frames.dcm", 8000, 8000, 3)
    with pytest.raises(InputImageError, match="too large to be a scan") as info:
        load_rgb(path)
    assert str(3 * 8000 * 8000 * 2) in str(info.value) and str(MAX_DECODED_BYTES) in str(info.value)


def test_zero_sized_dicom_is_an_error(tmp_path):
    with pytest.raises(InputImageError, match=r"no pixels \(0x0\)"):
        load_rgb(dicom_claiming(tmp_path / "empty.dcm", 0, 0, 1, payload=b""))


def _numpy_peak(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_high_bit_depth_scaling_never_holds_full_float_copies(tmp_path):
    """A 16-bit PNG just under the caps: scaling works in blocks, never on float64 copies of the whole image
    (numpy's allocations are traced by tracemalloc)."""
    values = np.random.default_rng(0).integers(0, 4096, (3000, 3000), dtype=np.uint16)
    peak = _numpy_peak(to_uint8, values)
    assert peak < 20 * 2**20, peak  # the 9 MB output + a 2 MB block; a float64 copy alone is 72 MB
    blocks = to_uint8(values)
    lo, hi = float(values.min()), float(values.max())
    whole = np.clip((values.astype(np.float64) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(blocks, whole)  # same values as the whole-image formula


def test_dicom_display_pipeline_works_in_blocks(tmp_path):
    frame = np.random.default_rng(1).integers(0, 4000, (2500, 2500), dtype=np.uint16)
    path = write_dicom(tmp_path / "big.dcm", frame, rescale=(2.0, -100.0))
    from tumor_edge.runtime.readers.dicom import read_dicom_frames

    peak = _numpy_peak(read_dicom_frames, path)
    stored = frame.nbytes  # a float64 copy is 4 times this
    assert peak < 5 * stored, (peak, stored)


def test_animated_gif_follows_the_frames_option(bundle, tmp_path):
    frames = [quadrant_image(q, 64, grey=True) for q in (0, 1, 3)]
    gif = animated_gif(tmp_path / "cine.gif", frames)
    every = cli(gif, "-m", bundle, "--json", "--frames", "all")
    rows = [json.loads(line) for line in every.stdout.splitlines()]
    assert [(r["frame"], r["frames"], r["label"]) for r in rows] == [
        (0, 3, "glioma"), (1, 3, "meningioma"), (2, 3, "pituitary")]  # every frame, not the first only
    middle = cli(gif, "-m", bundle)
    assert "[frame 1 of 3]" in middle.stdout and "meningioma" in middle.stdout
    assert "warning:" in middle.stderr and "3 frames" in middle.stderr


# ---- permissions (root ignores permission bits: the checks run unprivileged) --------------------------------


def _unprivileged() -> list[str]:
    prefix = unprivileged_runner()
    if prefix is None:
        pytest.skip("running as root and no setpriv/runuser to drop privileges: permission bits cannot be tested")
    return prefix


@pytest.fixture()
def shared(tmp_path):
    """A folder an unprivileged user can read, with a bundle and two good scans."""
    root = world_readable_folder()
    make_bundle(root / "bundle")
    save_quadrant(root / "scans" / "a.png", 0)
    save_quadrant(root / "scans" / "b.png", 3)
    for path in [root / "scans", *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root)


def _run_unprivileged(shared, *args):
    env = {"HOME": str(shared), "XDG_STATE_HOME": str(shared / "state")}
    return run_classify(*args, "-m", shared / "bundle", prefix=_unprivileged(), env=env, timeout=120, text=True)


def test_unreadable_file_named_on_the_command_line_is_one_failure(shared):
    secret = save_quadrant(shared / "scans" / "secret.png", 1)
    secret.chmod(0o000)
    result = _run_unprivileged(shared, shared / "scans" / "a.png", secret, shared / "scans" / "b.png")
    assert result.returncode == 2, result.stderr  # one failure, not the whole batch refused
    assert len(result.stdout.splitlines()) == 3  # header + the two readable scans
    assert errors(result.stderr) == [f"error: {secret}: permission denied"]


def test_path_under_a_folder_that_cannot_be_entered(shared):
    locked = shared / "locked"
    save_quadrant(locked / "c.png", 2)
    locked.chmod(0o000)
    result = _run_unprivileged(shared, locked / "c.png", shared / "scans" / "a.png")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors(result.stderr) == [f"error: {locked / 'c.png'}: permission denied"]
    assert "glioma" in result.stdout


def test_unreadable_subfolder_is_reported(shared):
    hidden = shared / "scans" / "private"
    save_quadrant(hidden / "d.png", 2)
    hidden.chmod(0o000)
    result = _run_unprivileged(shared, shared / "scans")
    assert result.returncode == 2, result.stderr  # reported, not skipped silently
    (line,) = errors(result.stderr)
    assert str(hidden) in line and "cannot read this folder" in line and "permission denied" in line
    alone = _run_unprivileged(shared, hidden, shared / "scans" / "a.png")  # named directly: one line too
    assert alone.returncode == 2 and [hidden.as_posix() in line for line in errors(alone.stderr)] == [True]


# ---- CSV, JSON and the terminal stay well-formed whatever the names ------------------------------------------


HOSTILE_NAMES = ["two\nlines.png", "carriage\rreturn.png", "=HYPERLINK(1).png", "+1.png", "@SUM.png",
                 "-2.png", "\tTAB.png", "comma, \"quoted\".png"]


@pytest.fixture(scope="module")
def hostile_names(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    paths = [save_quadrant(folder / name, i % 4) for i, name in enumerate(HOSTILE_NAMES)]
    (folder / "broken.png").write_bytes(b"not a png")
    return folder, paths


def test_csv_quotes_names_guards_formulas_and_lists_failures(bundle, hostile_names):
    folder, paths = hostile_names
    result = cli(*paths, folder / "broken.png", "-m", bundle, "--csv")
    assert result.exit_code == 2
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert len(rows) == len(paths) + 1  # a name with CR/LF is one cell, failures are listed
    for row, path in zip(rows, paths):
        name = one_line(str(path))  # control characters escaped: the cell is one line too
        assert row["file"] == name and row["label"] and not row["error"]  # absolute paths start with "/"
    assert rows[-1]["file"] == str(folder / "broken.png") and "not an image file" in rows[-1]["error"]
    assert rows[-1]["label"] == "" and rows[-1]["confidence"] == ""


def test_csv_cells_never_start_a_formula(bundle, hostile_names, monkeypatch):
    folder, paths = hostile_names
    monkeypatch.chdir(folder)
    names = [p.name for p in paths]
    result = cli("-m", bundle, "--csv", "--", *names)
    cells = [row["file"] for row in csv.DictReader(io.StringIO(result.stdout, newline=""))]
    assert len(cells) == len(names)
    for cell, name in zip(cells, map(one_line, names)):  # a leading tab is escaped, so no longer a formula start
        if name.startswith(("=", "+", "-", "@")):
            assert cell == "'" + name  # OWASP: a leading single quote makes it text
        else:
            assert cell == name


def test_table_rows_and_error_lines_stay_one_line(bundle, hostile_names):
    folder, paths = hostile_names
    bad = folder / "broken.png"
    result = cli(*paths, bad, "-m", bundle)
    assert len(result.stdout.strip().splitlines()) == 1 + len(paths)
    assert len(errors(result.stderr)) == 1


@pytest.fixture()
def undecodable_name(tmp_path):
    folder = tmp_path / "enc"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"scan\xff\xfe.png")
    Image.fromarray(quadrant_image(2)).save(os.fsdecode(raw))
    save_quadrant(folder / "z.png", 1)
    return folder


@pytest.mark.parametrize("fmt", ["table", "--csv", "--json"])
def test_non_utf8_file_names_do_not_end_the_batch(bundle, undecodable_name, fmt):
    args = [] if fmt == "table" else [fmt]
    result = run_classify(undecodable_name, "-m", bundle, *args, env={"LC_ALL": "C.UTF-8"}, timeout=60)
    assert result.returncode == 0, result.stderr  # no UnicodeEncodeError ending the batch
    text = result.stdout.decode("utf-8")  # still valid UTF-8
    if fmt == "--json":
        rows = [json.loads(line) for line in text.splitlines()]
        assert [(os.path.basename(r["file"]), r["label"]) for r in rows] == [
            ("scan\\xff\\xfe.png", "notumor"), ("z.png", "meningioma")]
    else:
        assert "scan\\xff\\xfe.png" in text and "z.png" in text


def test_disk_full_is_one_line_and_exit_1(bundle, tmp_path):
    scan = save_quadrant(tmp_path / "a.png", 0)
    with open("/dev/full", "w") as full:
        result = run_classify(scan, "-m", bundle, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert errors(result.stderr) == ["error: cannot write the results (no space left on device)"]


def test_closed_pipe_exits_quietly(bundle, tmp_path):
    scan = save_quadrant(tmp_path / "a.png", 0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    env.pop("TUMOR_EDGE_MODEL", None)
    process = subprocess.Popen(classify_command(str(scan), "-m", str(bundle)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # the reader is gone before the first row (`| head -0`)
    _, stderr = process.communicate(timeout=60)
    stderr = stderr.decode()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "error:" not in stderr


# ---- garbage in, no label out ----------------------------------------------------------------------------------


def test_constant_image_classifies_with_a_warning_said_once_in_its_row(bundle, tmp_path):
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(flat)
    result = cli(flat, "-m", bundle)
    assert result.exit_code == 0
    header, row = result.stdout.strip().splitlines()
    assert "[warning: blank or constant image (contrast 0.0 grey levels): not a scan]" in row
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == []


def test_all_nan_image_is_an_error(bundle, tmp_path):
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((16, 16), np.nan, np.float32)).save(nan)
    part = tmp_path / "part.tif"
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    values[0, :4] = np.nan
    Image.fromarray(values).save(part)
    result = cli(nan, part, "-m", bundle, "--json")
    assert result.exit_code == 2
    assert errors(result.stderr) == [f"error: {nan}: image holds no finite pixel values (all NaN or infinite)"]
    assert f"warning: {part}: 4 of 256 pixels are NaN or infinite" in result.stderr


def test_a_model_emitting_nan_gives_no_label_and_json_stays_strict(tmp_path):
    bundle = nan_bundle(tmp_path / "nan-bundle")
    scan = save_quadrant(tmp_path / "a.png", 0)
    result = cli(scan, scan, "-m", bundle, "--json")
    assert result.exit_code == 2
    assert ": NaN" not in result.stdout  # never {"label": "glioma", "confidence": NaN, ...}
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) for line in
            result.stdout.splitlines()]
    assert all("label" not in r and "not a number" in r["error"] for r in rows) and len(rows) == 2


def test_library_refuses_a_nan_prediction(tmp_path):
    from tumor_edge.runtime.classifier import Classifier

    classifier = Classifier.from_bundle(nan_bundle(tmp_path / "nan-bundle"))
    results = list(classifier.iter_predictions([save_quadrant(tmp_path / "a.png", 0)]))
    assert len(results) == 1 and not results[0].ok


def test_iter_predictions_takes_a_single_path(bundle, tmp_path):
    from tumor_edge.runtime.classifier import Classifier

    scan = save_quadrant(tmp_path / "a.png", 0)
    results = list(Classifier.from_bundle(bundle).iter_predictions(str(scan)))
    assert [r.label for r in results] == ["glioma"]


# ---- nothing vanishes without a word -----------------------------------------------------------------------


def test_folders_that_yield_nothing_are_reported(bundle, tmp_path):
    good = save_quadrant(tmp_path / "a.png", 0)
    (tmp_path / "scan.jpg").mkdir()  # a folder named like an image
    (tmp_path / "empty").mkdir()
    (tmp_path / "series" / "IM1.dcm").mkdir(parents=True)  # inside a walked folder
    save_quadrant(tmp_path / "series" / "b.png", 1)
    result = cli(good, tmp_path / "scan.jpg", tmp_path / "empty", tmp_path / "series", "-m", bundle, "--json")
    assert result.exit_code == 2  # the three are reported, none vanishes without a word
    lines = errors(result.stderr)
    assert f"error: {tmp_path / 'scan.jpg'}: no scan files in this folder" in lines
    assert f"error: {tmp_path / 'empty'}: no scan files in this folder" in lines
    assert f"error: {tmp_path / 'series' / 'IM1.dcm'}: is a folder named like a scan, and holds no scans" in lines
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum("label" in r for r in rows) == 2 and sum("error" in r for r in rows) == 3


def test_scan_inputs_keeps_order_and_problems(tmp_path):
    save_quadrant(tmp_path / "d" / "b.png", 0)
    save_quadrant(tmp_path / "d" / "a" / "c.png", 0)
    make_fifo(tmp_path / "d" / "f")
    scanned = scan_inputs([tmp_path / "missing.png", tmp_path / "d"])
    assert [p.relative_to(tmp_path).as_posix() for p in scanned.files] == ["missing.png", "d/a/c.png", "d/b.png"]
    assert [p.source for p in scanned.problems] == [str(tmp_path / "d" / "f")]


# ---- one exit-status scheme -------------------------------------------------------------------------------------


def test_exit_statuses(bundle, tmp_path):
    good = save_quadrant(tmp_path / "a.png", 0)
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert cli(good, "-m", bundle).exit_code == 0  # all classified
    assert cli(good, tmp_path / "bad.png", "-m", bundle).exit_code == 2  # some inputs failed, the rest ran
    assert cli(good, "-m", tmp_path / "nowhere").exit_code == 1  # model error: nothing ran
    assert cli(good, "-m", bundle, "--batch-size", "0").exit_code == 1  # usage error: nothing ran
    assert cli(tmp_path / "bad.png", "-m", bundle).exit_code == 2  # every input failed: still "some failed"


def test_frames_all_is_capped(tmp_path):
    path = dicom_claiming(tmp_path / "many.dcm", 2, 2, 5000, payload=b"\0" * (2 * 2 * 2 * 5000))
    with pytest.raises(InputImageError, match="limited to 1024 frames"):
        load_rgb_frames(path, "all")


def test_a_failed_decode_keeps_no_pixels_alive(tmp_path):
    """A batch keeps each failure's error to report it; an error that kept Pillow's frames would keep the partly
    decoded image its decoder holds alive, for every failed file of the batch."""
    buffer = io.BytesIO()
    Image.fromarray(quadrant_image(0, 256)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputImageError, match="truncated") as info:
        load_rgb(path)
    held, err = [], info.value
    while err is not None:
        tb = err.__traceback__
        while tb is not None:
            held.extend((tb.tb_frame.f_code.co_filename, value) for value in tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        err = err.__cause__
    pil_locals = [value for filename, value in held if f"{os.sep}PIL{os.sep}" in filename]
    assert pil_locals == []  # Pillow's finished frames were cleared (file and line stay for --debug)
    images = [value for _, value in held if isinstance(value, Image.Image)]
    assert images and all(type(image._im).__name__ == "DeferredError" for image in images)  # closed: core freed
