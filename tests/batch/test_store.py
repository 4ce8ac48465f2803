"""The RESULTS folder without Ray: parts appear whole or not at all, reading back keeps one set of rows per input
(the newest identity), another job's folder is refused; and inputs from a non-local pyarrow filesystem are copied
to the worker and named by their URI in the rows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyarrow import fs

from tests.runtime.models import CLASSES, save_quadrant
from tumor_edge.batch.scorer import Scorer, ScoreSettings, fetch_from, list_inputs
from tumor_edge.batch.store import Store
from tumor_edge.errors import ConfigError


def _part(path: str, mtime: int, label: str) -> pa.Table:
    return pa.Table.from_pylist([{"file": path, "label": label, "error": "", "input_path": path, "input_bytes": 1,
                                  "input_mtime_ns": mtime, "worker": "w", "seconds": 0.1}])


def test_read_back_keeps_one_set_of_rows_per_input(tmp_path):
    store = Store.open(str(tmp_path / "results"))
    store.write(_part("/a.png", 1, "glioma"))
    store.write(_part("/a.png", 1, "glioma"))  # the same input written twice (two drivers on one folder)
    store.write(_part("/b.png", 1, "notumor"))
    store.write(_part("/b.png", 2, "pituitary"))  # b changed and was scored again: its new row counts
    (tmp_path / "results" / ".part-half-written.parquet.tmp").write_bytes(b"PAR1 half")  # a killed writer's

    rows = store.read().to_pylist()

    assert [(r["input_path"], r["label"]) for r in rows] == [("/a.png", "glioma"), ("/b.png", "pituitary")]
    assert store.done() == {("/a.png", 1, 1), ("/b.png", 1, 1), ("/b.png", 1, 2)}


def test_another_jobs_results_are_refused_unless_forced(tmp_path):
    store = Store.open(str(tmp_path / "results"))
    store.claim({"model": "/m1", "frames": "middle"}, force=False)
    store.write(_part("/a.png", 1, "glioma"))
    store.claim({"model": "/m1", "frames": "middle"}, force=False)  # the same job: resumes

    with pytest.raises(ConfigError, match="another job .*model"):
        store.claim({"model": "/m2", "frames": "middle"}, force=False)
    store.claim({"model": "/m2", "frames": "middle"}, force=True)
    assert store.read() is None


def test_inputs_of_a_non_local_filesystem_are_fetched_and_named_by_uri(bundle, tmp_path):
    bucket = tmp_path / "bucket"
    for i in range(4):
        save_quadrant(bucket / "scans" / f"{i}.png", i)
    (bucket / "scans" / "notes.txt").write_text("not a scan")
    remote = fs.SubTreeFileSystem(str(bucket), fs.LocalFileSystem())  # not a LocalFileSystem: copied as from S3
    records = [{"input_path": f"s3://bucket/scans/{i}.png", "fs_path": f"scans/{i}.png", "input_bytes": 1,
                "input_mtime_ns": 1, "problem": None} for i in range(4)]
    records.append({**records[0], "input_path": "s3://bucket/scans/gone.png", "fs_path": "scans/gone.png"})

    rows = Scorer(ScoreSettings(str(bundle))).rows(records, fetch_from(remote))

    assert [(r["file"], r["label"]) for r in rows[:4]] == [(f"s3://bucket/scans/{i}.png", CLASSES[i]) for i in
                                                           range(4)]
    assert rows[4]["file"] == "s3://bucket/scans/gone.png" and "cannot read it" in rows[4]["error"]


def test_a_file_uri_source_is_walked_as_a_local_folder(tmp_path):
    save_quadrant(tmp_path / "scans" / "a.png", 0)
    (tmp_path / "scans" / "notes.txt").write_text("not a scan")

    records, filesystem = list_inputs((tmp_path / "scans").as_uri())

    assert filesystem is None and [r["input_path"] for r in records] == [str(tmp_path / "scans" / "a.png")]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_engine_runs_the_threads_it_is_given(bundle, threads):
    """onnxruntime ignores OMP_NUM_THREADS (which Ray sets per actor): the session's own intra-op count is set."""
    scorer = Scorer(ScoreSettings(str(bundle), threads=threads))

    assert scorer.classifier.backend.session.get_session_options().intra_op_num_threads == threads
