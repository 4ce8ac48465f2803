"""Reading an upload into memory, bounded: the raw body or the file part of a multipart form (Starlette's own
form parser spools large parts to disk; a scan must leave nothing behind)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from tumor_edge.errors import one_line
from tumor_edge.serve.errors import HttpError

DEFAULT_NAME = "upload"
MAX_NAME = 200


@dataclass(frozen=True)
class Upload:
    """The uploaded bytes and the file name the client gave (only its last component, cleaned)."""

    data: bytes
    filename: str


def clean_filename(raw: str | bytes | None) -> str:
    """A display name, never a path: no folders, control characters escaped, bounded length."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    name = one_line((raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip())
    return name[:MAX_NAME] or DEFAULT_NAME


async def read_body(request: Request, limit: int, timeout_s: float,
                    book: Callable[[int], None] | None = None) -> bytes:
    """The whole body, refusing more than `limit` bytes (413) or a sender slower than `timeout_s` (408).
    `book(n)` is told of every `n` bytes received before they are kept (it may refuse them by raising)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as err:
            raise HttpError(400, "Content-Length is not a number") from err
        if size > limit:
            raise HttpError(413, f"body of {size} bytes is over the limit of {limit} bytes")
    body = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise HttpError(413, f"body is over the limit of {limit} bytes")
                if book is not None:
                    book(len(chunk))
                body += chunk
    except TimeoutError as err:
        raise HttpError(408, f"the body did not arrive within {timeout_s:g} s") from err
    except ClientDisconnect as err:
        raise HttpError(400, "the client disconnected before sending the whole body") from err
    return bytes(body)


def parse_upload(body: bytes, content_type: str, query_name: str | None, disposition: str | None) -> Upload:
    """A multipart form's file part (field `file`, else the first part with a file name), else the raw body."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"multipart/form-data":
        return _from_multipart(body, params.get(b"boundary"))
    if not body:
        raise HttpError(400, "empty body: send the scan as the request body or as the `file` field of a form")
    name = query_name
    if not name and disposition:
        _, dparams = parse_options_header(disposition)
        raw = dparams.get(b"filename")
        name = unquote(raw.decode("latin-1")) if raw else None
    return Upload(body, clean_filename(name))


def _from_multipart(body: bytes, boundary: bytes | None) -> Upload:
    if not boundary:
        raise HttpError(400, "multipart body without a boundary")
    parts: list[dict] = []
    state: dict = {}

    def on_part_begin() -> None:
        state["part"] = {"headers": {}, "data": bytearray()}

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["part"]["data"] += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        state["part"]["headers"][state.pop("field", b"").lower()] = state.pop("value", b"")

    def on_part_end() -> None:
        parts.append(state.pop("part"))

    callbacks = {"on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
                 "on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, KeyError) as err:
        raise HttpError(400, f"malformed multipart body ({err})") from err
    files = []
    for part in parts:
        _, params = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in params:
            files.append((params.get(b"name"), params[b"filename"], bytes(part["data"])))
    if not files:
        raise HttpError(400, "the form has no file part: send the scan as the `file` field")
    name, filename, data = next((f for f in files if f[0] == b"file"), files[0])
    if not data:
        raise HttpError(400, f"{clean_filename(filename)}: empty file (0 bytes)")
    return Upload(data, clean_filename(filename))
