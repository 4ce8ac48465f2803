"""Check the bundle, load the model, run it once, open the socket, run uvicorn: a broken bundle is refused with one
line before the port opens; the URL is printed once the socket is bound (how a --port 0 caller learns it).

The model runs once on a blank image before the server listens: a bundle whose model cannot run (outputs of the
wrong shape, an engine error, scores that are no probabilities) would otherwise start and answer every request 500.

uvicorn keeps a fresh connection that sends nothing, or headers that stop half-way, open for good: a few hundred
such sockets exhaust the file descriptors. `header_timeout_protocol` runs a timer until h11 has the complete head
(and while a body nobody will read is still arriving); when it fires the connection is closed, after a JSON 408 if
a request had begun.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading

import h11
import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import resolve_model_path
from tumor_edge.errors import ModelError, TumorEdgeError, first_line, one_line
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.serve.app import create_app
from tumor_edge.serve.config import ServeConfig, ip_of
from tumor_edge.serve.hosts import COMMON_HEADERS
from tumor_edge.serve.inference import model_source


def check_runs(classifier) -> None:
    """One inference on a blank image through the runtime's own prediction stages, a one-line ModelError when it
    fails; it also warms the engine, so the first client is not the one who waits."""
    spec = classifier.preprocessing
    blank = np.zeros((1, spec.height, spec.width, 3), np.uint8)
    path = classifier.backend.path
    try:
        (result,) = classifier.predictions(blank, [("a blank image", None, None)])
    except ModelError:
        raise
    except Exception as err:  # the engine's own error: one line, not a traceback
        raise ModelError(f"the model does not run on a blank image ({first_line(err)})", path) from err
    if not result.ok:
        raise result.exception()


def timeout_reply(timeout_s: float) -> bytes:
    body = json.dumps({"error": f"the request headers did not arrive within {timeout_s:g} s"}).encode()
    head = ["HTTP/1.1 408 Request Timeout", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in COMMON_HEADERS.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """An H11Protocol class closing connections whose request headers take longer than `timeout_s`."""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout_s = timeout_s
        _header_timer: asyncio.TimerHandle | None = None
        _head_started = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head():
                self._head_started = True
                if self._header_timer is None:  # the next request on a kept-alive connection begins
                    self._arm()
            super().data_received(data)
            if not self._awaiting_head() and not self._discarding_body():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            # A pipelined request's partial head, already buffered: its clock starts now.
            self._head_started = bool(self.conn.trailing_data[0])
            if (self._awaiting_head() and self._head_started) or self._discarding_body():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_head(self) -> bool:
            return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

        def _discarding_body(self) -> bool:
            """The answer is out but the client is still sending a body nobody will read."""
            return self.conn.our_state in (h11.DONE, h11.MUST_CLOSE) and self.conn.their_state is h11.SEND_BODY

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or not (self._awaiting_head() or self._discarding_body()):
                return
            if self._awaiting_head() and self._head_started:
                self.transport.write(timeout_reply(self.header_timeout_s))
            self.transport.close()

    return HeaderTimeoutProtocol


def open_socket(host: str, port: int) -> socket.socket:
    address = ip_of(host.strip("[]"))
    family = socket.AF_INET6 if address is not None and address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise TumorEdgeError(f"cannot listen on {host}:{port} ({err.strerror or first_line(err)})") from err
    sock.set_inheritable(True)
    return sock


class StoppingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C also stops running requests' work, so the shutdown finishes
    inside its grace period."""

    def __init__(self, uv_config: uvicorn.Config, stopping: threading.Event):
        super().__init__(uv_config)
        self.stopping = stopping

    def handle_exit(self, sig, frame) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def serve(config: ServeConfig) -> None:
    config.validate()
    model_path = resolve_model_path(config.model)
    options = BackendOptions(threads=config.threads, providers=list(config.providers) if config.providers else None,
                             memory_arena=True,  # a server runs many batches: the arena keeps memory flat
                             trust=config.trust)
    classifier = Classifier.from_bundle(model_path, model_file=config.model_file, options=options)
    check_runs(classifier)
    sock = open_socket(config.host, config.port)  # bound, not yet listening: uvicorn listens when it starts
    host, port = sock.getsockname()[:2]
    stopping = threading.Event()  # set on SIGTERM/Ctrl-C: running requests stop at their next batch
    app = create_app(classifier, model_path, config, port, stopping)
    shown = f"[{host}]" if ":" in host else host
    print(f"note: {RESEARCH_NOTICE}", file=sys.stderr)
    source = model_source(classifier)
    classes = ", ".join(map(one_line, classifier.classes))
    print(f"serving {one_line(source['file'])} with {source['engine']} ({classes}) on "
          f"http://{shown}:{port}/ (page at /, API at /v1/classify, description at /openapi.json); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uv_config = uvicorn.Config(app, http=header_timeout_protocol(config.header_timeout_s),
                               log_level="debug" if config.debug else "warning", access_log=config.debug,
                               server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=5)
    StoppingServer(uv_config, stopping).run(sockets=[sock])
