"""The server's one error type, the JSON every error answer carries, and the rule that an answer never shows
where files live on the server (a client reads file names, the operator's log keeps the folders)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from tumor_edge import RESEARCH_NOTICE

COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Research-Notice": RESEARCH_NOTICE,
                  "Cache-Control": "no-store"}

# The folders of an absolute path (POSIX `/a/b/`, `~/a/`, Windows `C:\a\` or `\\host\share\`), not preceded by a
# word character (so `input/output` or `1/2` stay): removing them leaves the file's own name.
_FOLDERS = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:|\\\\[^\s\\/]+)?[\\/](?:[^\s\\/'\"<>|]*[\\/])+")


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers={**COMMON_HEADERS, **(headers or {})})


def without_folders(text: str, known: Iterable[Path] = ()) -> str:
    """`text` with every absolute path cut to its last component: the `known` folders first (whatever characters
    their names hold), then anything else shaped like an absolute path (an engine's own message may name one)."""
    for folder in sorted({str(p).rstrip("/\\") for p in known} - {"", "."}, key=len, reverse=True):
        text = re.sub(re.escape(folder) + r"[\\/]", "", text)  # a path inside it: its name there
        text = re.sub(re.escape(folder) + r"(?![\w.-])", lambda _, name=Path(folder).name: name, text)
    return _FOLDERS.sub("", text)


def without_folders_in(value: Any, known: Iterable[Path] = ()) -> Any:
    """A copy of JSON-like `value` with `without_folders` applied to every string in it (keys stay)."""
    if isinstance(value, str):
        return without_folders(value, known)
    if isinstance(value, dict):
        return {key: without_folders_in(item, known) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_folders_in(item, known) for item in value]
    return value
