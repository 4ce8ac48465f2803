"""The RESULTS folder: Parquet part files, each written whole under a temporary name and then renamed, so a part
that exists is complete whenever the job was killed; `_job.json` records what the rows were made with, so a
rerun adds to results of the same job only.

Exactly once: a rerun scores the inputs whose identity (path, bytes, mtime_ns) has no row yet; reading back keeps,
for each input path, the rows of one part only (the newest identity: a changed file's new rows replace its old
ones), so a part written twice (two drivers on one RESULTS) never doubles an input.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from tumor_edge.batch.scorer import EXTRA, IDENTITY
from tumor_edge.errors import ConfigError

JOB_FILE = "_job.json"
PART_PREFIX = "part-"


@dataclass
class Store:
    filesystem: object
    root: str

    @classmethod
    def open(cls, out: str) -> Store:
        from pyarrow import fs

        local = (fs.LocalFileSystem(), str(Path(out).expanduser().resolve()))
        filesystem, root = fs.FileSystem.from_uri(out) if "://" in out else local
        filesystem.create_dir(root, recursive=True)
        return cls(filesystem, root.rstrip("/"))

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def parts(self) -> list[str]:
        from pyarrow import fs

        infos = self.filesystem.get_file_info(fs.FileSelector(self.root))
        return sorted(i.path for i in infos if i.base_name.startswith(PART_PREFIX) and i.path.endswith(".parquet"))

    def claim(self, job: dict, force: bool) -> None:
        """Record `job`; refuse a RESULTS folder holding another job's rows unless `force` (which deletes them)."""
        path = self._path(JOB_FILE)
        if self.filesystem.get_file_info(path).is_file:
            with self.filesystem.open_input_stream(path) as stream:
                before = json.loads(stream.read())
            if before != job and self.parts():
                if not force:
                    changed = sorted(k for k in job.keys() | before.keys() if job.get(k) != before.get(k))
                    raise ConfigError(f"holds the results of another job (its {', '.join(changed)} differ); name "
                                      "another folder, or pass --force to replace them", self.root)
                for part in self.parts():
                    self.filesystem.delete_file(part)
        self.write_bytes(JOB_FILE, json.dumps(job, indent=1, sort_keys=True).encode())

    def done(self) -> set[tuple]:
        """The identities that already have rows."""
        import pyarrow.parquet as pq

        found: set[tuple] = set()
        for part in self.parts():
            table = pq.read_table(part, columns=list(IDENTITY), filesystem=self.filesystem)
            found.update(zip(*(table.column(c).to_pylist() for c in IDENTITY)))
        return found

    def write(self, table) -> None:
        """One part, atomically: written under a dot name (ignored by readers), then renamed."""
        import pyarrow.parquet as pq

        name = f"{PART_PREFIX}{uuid.uuid4().hex}.parquet"
        temporary = self._path(f".{name}.tmp")
        pq.write_table(table, temporary, filesystem=self.filesystem)
        self.filesystem.move(temporary, self._path(name))

    def read(self):
        """Every input's rows once (see the module's docstring), in input path order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p, filesystem=self.filesystem) for p in self.parts()]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default")
        owner: dict[str, tuple] = {}  # input path -> (mtime_ns, part index) whose rows count
        part_of = [i for i, t in enumerate(tables) for _ in range(t.num_rows)]
        paths = table.column("input_path").to_pylist()
        mtimes = table.column("input_mtime_ns").to_pylist()
        for path, mtime, part in zip(paths, mtimes, part_of):
            owner[path] = max(owner.get(path, (mtime, part)), (mtime, part))
        keep = [owner[path] == (mtime, part) for path, mtime, part in zip(paths, mtimes, part_of)]
        kept = table.filter(pa.array(keep))
        order = sorted(range(kept.num_rows), key=kept.column("input_path").to_pylist().__getitem__)
        return kept.take(pa.array(order, type=pa.int64()))

    def write_csv(self, table) -> str:
        """The rows as `classify --csv` prints them (its columns, its cells), then the identity columns."""
        columns = [c for c in table.column_names if c not in EXTRA]
        lines = []
        for cells in [columns, *([row[c] for c in columns] for row in table.select(columns).to_pylist())]:
            buffer = io.StringIO()  # classify's quoting: CR or LF in a cell quotes it
            csv.writer(buffer, lineterminator="\r\n").writerow(cells)
            lines.append(buffer.getvalue()[:-2] + "\n")
        self.write_bytes("results.csv", "".join(lines).encode())
        return self._path("results.csv")

    def write_bytes(self, name: str, data: bytes) -> None:
        temporary = self._path(f".{name}.tmp")
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        self.filesystem.move(temporary, self._path(name))
