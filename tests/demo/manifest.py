"""The demo dataset's per-image record, as the tests read it."""

import csv
from pathlib import Path

from tumor_edge.demo.generate import MANIFEST


def read_manifest(root: Path) -> list[dict[str, str]]:
    with open(Path(root) / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))
