"""Check the bundle, load the model, run it once, open the socket, run uvicorn: a broken bundle is refused with one
line before the port opens; the URL is printed once the socket is bound (how a --port 0 caller learns it)."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.errors import TumorEdgeError, first_line, one_line
from tumor_edge.serve.config import ServeConfig


def open_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise TumorEdgeError(f"cannot listen on {host}:{port} ({err.strerror or first_line(err)})") from err
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig) -> None:
    import uvicorn

    class StoppingServer(uvicorn.Server):
        """uvicorn's server, which on SIGTERM or Ctrl-C also stops running requests' work, so the shutdown finishes
        inside its grace period."""

        def __init__(self, uv_config: uvicorn.Config, stopping: threading.Event):
            super().__init__(uv_config)
            self.stopping = stopping

        def handle_exit(self, sig, frame) -> None:
            self.stopping.set()
            super().handle_exit(sig, frame)

    from tumor_edge.contracts.bundle import resolve_model_path
    from tumor_edge.runtime import BackendOptions, Classifier
    from tumor_edge.serve.app import create_app
    from tumor_edge.serve.bundle_files import check_bundle_files
    from tumor_edge.serve.inference import model_source
    from tumor_edge.serve.model_check import check_runs
    from tumor_edge.serve.protocol import header_timeout_protocol

    config.validate()
    model_path = resolve_model_path(config.model)
    check_bundle_files(model_path, config.model_file)
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
