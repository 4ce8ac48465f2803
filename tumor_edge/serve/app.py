"""The ASGI application: Host check, routes, bearer-token check, the upload stage and admission, and JSON with an
`error` reason for every failure (a crash included): no traceback and no server folder leaves the process.

An upload is read into memory, bounded: the raw body or the file part of a multipart form (Starlette's own form
parser spools large parts to disk; a scan must leave nothing behind).
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tumor_edge import __version__
from tumor_edge.errors import first_line, one_line
from tumor_edge.serve.admission import Admission, Budget, Busy, Stopped, UploadStage, meter_engine, run_charged
from tumor_edge.serve.config import ServeConfig
from tumor_edge.serve.hosts import COMMON_HEADERS, HostCheck, HostRule, HttpError, error_response
from tumor_edge.serve.inference import bundle_of, classify_bytes, model_description, without_folders
from tumor_edge.serve.page import PAGE_CSP, openapi_document, render_page

log = logging.getLogger("tumor_edge.serve")
RETRY_AFTER_S = 1
FRAME_CHOICES = ("middle", "all")
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


async def read_body(request: Request, limit: int, timeout_s: float, book: Callable[[int], None]) -> bytes:
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


def create_app(classifier: Any, model_path: Path, config: ServeConfig, port: int, stopping: threading.Event
               ) -> HostCheck:
    """An app serving `classifier` (loaded and run once) to requests addressed to `config.host` on `port` (the
    bound one); each request's work stops at its inference cap, when its client goes, or once `stopping` is set."""
    meter_engine(classifier, config.concurrency)
    admission = Admission(config.concurrency + 1, config.queue)  # one more in progress than the engine runs
    uploads = UploadStage(config.upload_places, config.upload_places_per_client,
                          config.upload_budget_bodies * config.max_body_bytes)
    model_info = model_description(classifier, classifier.metadata, model_path)
    server_folders = [p for p in (model_path, bundle_of(model_path), classifier.backend.path,
                                  classifier.model_path) if p is not None]
    server_folders += [Path(p).resolve().parent for p in server_folders]
    expected = f"Bearer {config.token}".encode() if config.token else None

    def authorize(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HttpError(401, "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
                            {"WWW-Authenticate": "Bearer"})

    async def page(request: Request) -> Response:
        headers = {**COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP}
        return HTMLResponse(render_page(classifier.classes, bool(expected)), headers=headers)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "busy": admission.admitted,
                             "uploading": uploads.receiving}, headers=COMMON_HEADERS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(config), headers=COMMON_HEADERS)

    async def model(request: Request) -> Response:
        authorize(request)
        return JSONResponse(model_info, headers=COMMON_HEADERS)

    async def classify(request: Request) -> Response:
        authorize(request)
        frames = request.query_params.get("frames", config.frames)
        if frames not in FRAME_CHOICES:
            raise HttpError(400, f"frames must be one of {', '.join(FRAME_CHOICES)}, not {frames!r}")
        heatmap = request.query_params.get("heatmap", "0")
        if heatmap not in ("0", "1"):
            raise HttpError(400, f"heatmap must be 0 or 1, not {heatmap!r}")
        if heatmap == "1" and frames == "all":
            raise HttpError(400, "heatmap=1 draws a map through the model for one frame (tens of inferences each): "
                                 "send it with frames=middle, or frames=all without it")
        client = request.client.host if request.client else "unknown"
        try:
            async with uploads.enter(client) as take:
                body = await read_body(request, config.max_body_bytes, config.read_timeout_s, take)
            upload = parse_upload(body, request.headers.get("content-type", ""),
                                  request.query_params.get("filename"),
                                  request.headers.get("content-disposition"))
            del body
            work = partial(classify_bytes, classifier, upload.data, upload.filename, frames, heatmap == "1")
            async with admission.enter(), admission.slot():
                outcome = await run_charged(Budget(config.max_inferences, stopping), work, request.receive)
        except Stopped as stop:
            raise HttpError(stop.status, stop.reason, {"Connection": "close"} if stop.status == 503 else None) from None
        except Busy as busy:
            raise HttpError(503, f"busy: {busy}; retry in {RETRY_AFTER_S} s",
                            {"Retry-After": str(RETRY_AFTER_S)}) from None
        except HttpError:
            raise
        except Exception as err:  # a model error: answered here, so the server logs one line, not a traceback
            return await on_crash(request, err)
        if outcome.failed:
            failure = next(r for r in outcome.results if "error" in r)
            return JSONResponse(failure, status_code=422, headers=COMMON_HEADERS)
        return JSONResponse(outcome.results if frames == "all" else outcome.results[0], headers=COMMON_HEADERS)

    async def on_http_error(request: Request, err: HttpError) -> Response:
        return error_response(err.status, err.reason, err.headers)

    async def on_starlette_error(request: Request, err: HTTPException) -> Response:
        reasons = {404: f"no such endpoint: {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}
        return error_response(err.status_code, reasons.get(err.status_code, str(err.detail)),
                              dict(err.headers or {}))

    async def on_crash(request: Request, err: Exception) -> Response:
        # The client gets one line; the server's operator gets the traceback with --debug.
        log.error("%s %s failed: %s", request.method, one_line(request.url.path), one_line(first_line(err, 1000)))
        if config.debug:
            traceback.print_exception(err, file=sys.stderr)
        return error_response(500, f"internal error: {without_folders(first_line(err), server_folders)}")

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/v1/classify", classify, methods=["POST"]),
    ]
    handlers = {HttpError: on_http_error, HTTPException: on_starlette_error, Exception: on_crash}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return HostCheck(app, HostRule.for_bind(config.host, port, config.allow_hosts))
