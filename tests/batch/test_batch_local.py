"""`tumor-edge batch` on a local Ray: the rows are classify --csv's rows, a bad input is a row with its error, and a
driver killed mid-run (SIGKILL) finishes on the next run with exactly one row per input."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.batch.conftest import cli, read_rows, start_cli
from tests.runtime.models import quadrant_image, save_quadrant, write_dicom

IDENTITY_COLUMNS = 3  # input_path, input_bytes, input_mtime_ns after classify's columns


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_mixed_folder_gives_classify_rows_one_per_input(ray_sandbox, bundle, tmp_path):
    pytest.importorskip("pydicom", reason="the DICOM scan needs the `dicom` extra")
    folder = tmp_path / "mixed"
    for i in range(4):
        save_quadrant(folder / f"good{i}.png", i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    write_dicom(folder / "head.dcm", quadrant_image(2)[..., 0].astype(np.uint16) * 100)
    os.mkfifo(folder / "pipe.png")  # never opened: a row saying what it is
    results = tmp_path / "results"

    batch = cli("batch", str(folder), "--model", str(bundle), "--out", str(results), "--csv", "--workers", "1")
    classify = cli("classify", str(folder), "--model", str(bundle), "--csv")

    assert batch.returncode == classify.returncode == 2, batch.stderr[-3000:]
    theirs = _csv_rows(classify.stdout)
    ours = _csv_rows((results / "results.csv").read_text())
    assert [row[:-IDENTITY_COLUMNS] for row in ours][0] == theirs[0]  # same columns
    assert sorted(row[:-IDENTITY_COLUMNS] for row in ours[1:]) == sorted(theirs[1:])  # same cells, row for row
    rows = {Path(r["input_path"]).name: r for r in read_rows(results)}
    assert sorted(rows) == ["broken.jpg", "good0.png", "good1.png", "good2.png", "good3.png", "head.dcm",
                            "pipe.png"]
    assert rows["head.dcm"]["label"] == "notumor" and rows["head.dcm"]["error"] == ""
    assert rows["broken.jpg"]["label"] == "" and "corrupt or truncated" in rows["broken.jpg"]["error"]
    assert "not a regular file" in rows["pipe.png"]["error"]
    assert {r["worker"].split(" threads ")[1] for r in rows.values()} == {"1"}  # 1 CPU a worker: 1 engine thread
    assert "2 failed" in batch.stderr and "research tool" in batch.stderr


def test_driver_killed_mid_run_finishes_on_rerun_exactly_once(ray_sandbox, bundle, scans, tmp_path):
    folder, expected = scans
    results = tmp_path / "results"
    args = ("batch", str(folder), "--model", str(bundle), "--out", str(results), "--rows-per-task", "4")
    driver = start_cli(*args)
    deadline = time.monotonic() + 240
    while not list(results.glob("part-*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, f"the job ended before it could be killed: {driver.communicate()[1][-3000:]}"
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    before = read_rows(results)
    assert 0 < len(before) < len(expected), "the kill did not land mid-run"

    rerun = cli(*args)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len({r['input_path'] for r in before})} already in" in rerun.stderr
    rows = read_rows(results)
    assert sorted(r["input_path"] for r in rows) == sorted(expected)  # every input, once
    assert {r["input_path"]: r["label"] for r in rows} == expected


def test_a_damaged_bundle_is_one_line_before_ray_starts(ray_sandbox, bundle, tmp_path):
    damaged = tmp_path / "bundle"
    damaged.mkdir()
    for path in bundle.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    model = damaged / "model_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 1
    model.write_bytes(bytes(data))

    result = cli("batch", str(tmp_path), "--model", str(damaged), "--out", str(tmp_path / "results"))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {model}: sha256")
    assert "Traceback" not in result.stderr and not (tmp_path / "results").exists()
