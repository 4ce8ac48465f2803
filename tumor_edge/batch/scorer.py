"""The per-scan function every engine calls (a Ray actor, a Spark executor): open the bundle once, then turn a
list of inputs into result rows identical to `classify --csv`'s.

Rows come from classify's own CSV writer (a `classify --csv` row, cell for cell: probabilities, warnings,
abstentions, errors, the model file and engine), fed by the classifier's result stream (images, multi-frame files,
volumes: `Classifier.iter_results`), plus each input's identity (path, bytes, mtime) and the worker that scored
it. A file that cannot be read is a row with its error, never an exception; a model error still raises.

SOURCE becomes the list of inputs with their identities: a local folder as `classify` walks it (the readers'
registry says what is a scan; a DICOM series folder is one input), or any URI pyarrow.fs understands (s3://,
gs://, hdfs://...: files a reader claims by suffix, copied to the worker when scored).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.errors import ConfigError

IDENTITY = ("input_path", "input_bytes", "input_mtime_ns")  # what makes a row's input the same input on a rerun
EXTRA = ("worker", "seconds")  # who scored it and its share of its batch's wall time there (per-worker figures)


@dataclass(frozen=True)
class ScoreSettings:
    """What `classify` would be told: the bundle, its file and trust key, and how to read multi-frame files and
    volumes. `threads`: the engine's intra-op threads (the CPUs the scheduler gave this worker)."""

    model: str
    model_file: str | None = None
    trust: str | None = None
    frames: str = "middle"
    axis: str = "axial"
    slices: str = "middle"
    batch_size: int = 16
    abstain: bool = False
    threads: int = 1


class Scorer:
    """One opened, verified bundle; `rows(inputs)` scores a batch of input records (dicts with IDENTITY's keys and
    `problem`, a reason already found while listing, or None)."""

    def __init__(self, settings: ScoreSettings):
        from tumor_edge.runtime import BackendOptions, Classifier

        if settings.trust:  # the bytes this worker loads are the ones checked
            from tumor_edge.signing.trust import enforce_trust

            enforce_trust(settings.model, settings.trust)
        self.settings = settings
        options = BackendOptions(threads=max(1, settings.threads), memory_arena=True)
        self.classifier = Classifier.from_bundle(settings.model, model_file=settings.model_file, options=options)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def rows(self, inputs: list[dict], fetch=None) -> list[dict]:
        """A row per result (a 2-D scan: one; a volume: its slices and summary) of every input, in order.
        `fetch(path, folder) -> local path` copies an input that is not a local file (a bucket's object)."""
        from tumor_edge.runtime import WRITERS, Failure, VolumeSummary, csv_cell

        start = time.perf_counter()
        buffer = io.StringIO()
        backend = self.classifier.backend
        writer = WRITERS["csv"](buffer, self.classifier.classes, None, 0, RESEARCH_NOTICE,
                                model=(backend.path.name, backend.name))
        writer.header()
        columns = _cells(buffer)
        out: dict[str, list[dict]] = {record["input_path"]: [] for record in inputs}  # rows in input order

        def emit(record: dict, result) -> None:
            if isinstance(result, VolumeSummary):
                writer.volume_summary(result)
            elif result.ok:
                writer.prediction(result)
            else:
                writer.failure(result)
            row = dict(zip(columns, _cells(buffer)))
            if record.get("fetched"):
                row["file"] = csv_cell(record["input_path"])
            out[record["input_path"]].append({**row, **{k: record[k] for k in IDENTITY}})

        with tempfile.TemporaryDirectory(prefix="tumor-edge-batch-") as scratch:
            local: dict[str, dict] = {}
            for record in inputs:
                path = record["input_path"]
                if record.get("problem"):
                    emit(record, Failure(path, f"{path}: {record['problem']}"))
                    continue
                if fetch is not None:
                    try:
                        path = fetch(record.get("fs_path") or path, scratch)
                        record = {**record, "fetched": True}
                    except OSError as err:
                        emit(record, Failure(path, f"{path}: cannot read it ({err})"))
                        continue
                local[str(path)] = record
            s = self.settings
            stream = self.classifier.iter_results(list(local), frames=s.frames, axis=s.axis, batch_size=s.batch_size,
                                                  slices=int(s.slices) if s.slices.isdigit() else s.slices,
                                                  workers=0, abstain=s.abstain)
            try:
                for result in stream:
                    emit(local[str(result.source)], result)
            finally:
                stream.close()
        rows = [row for group in out.values() for row in group]
        share = (time.perf_counter() - start) / max(1, len(rows))
        return [{**row, "worker": self.worker, "seconds": share} for row in rows]


def _cells(buffer: io.StringIO) -> list[str]:
    """The cells of the one CSV line the writer just wrote (quoted cells may hold newlines), then clear it."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return next(csv.reader(io.StringIO(text)))


def fetch_from(filesystem):
    """A `fetch` for `Scorer.rows` that copies a file of a pyarrow filesystem into the scratch folder, keeping its
    name (readers claim files by suffix)."""

    def fetch(path: str, folder: str) -> str:
        target = Path(folder) / f"{len(os.listdir(folder))}" / Path(path).name
        target.parent.mkdir()
        with filesystem.open_input_stream(path) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        return str(target)

    return fetch


def list_inputs(source: str) -> tuple[list[dict], object | None]:
    """(input records in order, the pyarrow filesystem workers read them from, or None for local files)."""
    from pyarrow import fs

    if "://" not in source:
        return _local(Path(source)), None
    try:
        filesystem, root = fs.FileSystem.from_uri(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot open {source} ({err})") from None
    if isinstance(filesystem, fs.LocalFileSystem):
        return _local(Path(root)), None
    return _remote(filesystem, source, root), filesystem


def _local(folder: Path) -> list[dict]:
    from tumor_edge.runtime import scan_inputs

    if not folder.exists():
        raise ConfigError("no such file or folder", folder)
    folder = folder.resolve()  # rows name absolute paths: a worker on another node (or cwd) reads the same file
    scanned = scan_inputs([folder])
    return [_record(str(p.source), 0, 0, p.reason) for p in scanned.problems] + [local_record(p) for p in scanned.files]


def local_record(path: str | Path) -> dict:
    """A local input's record: a file's size and mtime; a series folder's total size and newest mtime (a slice
    added or changed counts); zeros for a path that vanished (the reader says why when it is scored)."""
    path = Path(path)
    try:
        info = os.stat(path)
        if not path.is_dir():
            return _record(str(path), info.st_size, info.st_mtime_ns)
        files = [os.stat(entry.path) for entry in os.scandir(path) if entry.is_file()]
        return _record(str(path), sum(f.st_size for f in files), max((f.st_mtime_ns for f in files),
                                                                      default=info.st_mtime_ns))
    except OSError:
        return _record(str(path), 0, 0)


def _remote(filesystem, source: str, root: str) -> list[dict]:
    from pyarrow import fs

    from tumor_edge.runtime import claimed_suffix

    scheme = source.split("://", 1)[0]
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=False))
    records = []
    for info in sorted(infos, key=lambda i: i.path):
        relative = info.path[len(root):].lstrip("/")
        if info.type != fs.FileType.File or any(part.startswith(".") for part in relative.split("/")):
            continue
        if claimed_suffix(info.path) is not None:
            record = _record(f"{scheme}://{info.path}", info.size or 0, info.mtime_ns or 0)
            records.append({**record, "fs_path": info.path})
    if not records:
        raise ConfigError(f"no scan files in {source}")
    return records


def _record(path: str, size: int, mtime_ns: int, problem: str | None = None) -> dict:
    return {"input_path": path, "input_bytes": size, "input_mtime_ns": mtime_ns, "problem": problem, "fs_path": None}


def rows_udf(settings: ScoreSettings, batch_size: int = 64):
    """For sites that run Spark: `Scorer` as a Spark pandas UDF (`predict_batch_udf`), a column of local paths ->
    a column of JSON arrays of each input's `classify --csv` rows (a 2-D scan: one row; a volume: its slices and
    summary), scored by the same opened-once, verified bundle:

        from pyspark.sql import functions as F
        from tumor_edge.batch.scorer import ScoreSettings, rows_udf

        score = rows_udf(ScoreSettings("/shared/bundles/inception299", threads=1))
        files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load("/shared/scans")
        rows = F.from_json(score(F.regexp_replace("path", "^file:", "")), "array<map<string,string>>")
        out = files.select(F.explode(rows).alias("row"))  # the content column is never read

    Paths must be readable by every executor (a shared mount). Needs pyspark (the `spark` extra) and Java 17+."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StringType

    def make_predict_fn():
        import numpy as np

        scorer = Scorer(settings)  # once per Python worker: the bundle opened and verified once

        def predict(paths: np.ndarray) -> np.ndarray:
            records = [local_record(str(p)) for p in paths]
            by_input: dict[str, list] = {}
            for row in scorer.rows(records):
                by_input.setdefault(row["input_path"], []).append(row)
            return np.array([json.dumps(by_input.get(r["input_path"], []), default=str) for r in records],
                            dtype=object)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=StringType(), batch_size=batch_size)
