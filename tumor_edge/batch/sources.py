"""SOURCE to the list of inputs to score, each with its identity (path, bytes, mtime): a local folder as `classify`
walks it (the readers' registry says what is a scan; a DICOM series folder is one input), or any URI pyarrow.fs
understands (s3://, gs://, hdfs://...: files a reader claims by suffix, copied to the worker when scored)."""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.errors import ConfigError


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
