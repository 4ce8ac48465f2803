"""Command-line PATH arguments to the list of scan files to classify."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tumor_edge.runtime.image import is_scan_file


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix: a wrong one is reported when decoding), folders recursed for scan
    files in sorted order (hidden files and folders skipped). A path that does not exist is kept, so that the
    batch reports it as a failure with the others instead of stopping before it starts."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            out.append(path)
            continue
        found: list[Path] = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(p for p in (Path(folder) / name for name in files) if is_scan_file(p))
        out.extend(sorted(found))
    return out
