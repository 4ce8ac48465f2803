"""`tumor-edge serve`: the classifier as a local HTTP API and web page. Only click is imported at module level."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from tumor_edge.serve.config import TOKEN_ENV, ServeConfig

D = {f.name: f.default for f in fields(ServeConfig)}


@click.command()
@click.option("-m", "--model", metavar="BUNDLE_OR_FILE",
              help="Bundle folder or model file, as for classify. Default: $TUMOR_EDGE_MODEL, else the bundle "
                   "`tumor-edge export` wrote last on this machine.")
@click.option("--model-file", metavar="NAME", help="Which file of the bundle to run (default: its preferred one).")
@click.option("--host", default=D["host"], show_default=True,
              help="Address to listen on. Anything but loopback needs --token or --insecure.")
@click.option("--port", type=click.IntRange(0, 65535), default=D["port"], show_default=True,
              help="Port (0: any free one; the URL is printed).")
@click.option("--token", envvar=TOKEN_ENV, default=None, metavar="SECRET",
              help=f"Require `Authorization: Bearer SECRET` on /v1/* (or set ${TOKEN_ENV}, which keeps it out of "
                   "the process list).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without a token (trusted networks).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=D["max_body_mb"], show_default=True,
              help="Largest upload accepted (413 beyond).")
@click.option("--concurrency", type=click.IntRange(min=1), default=D["concurrency"], show_default=True,
              help="Inferences at once (each already uses --threads cores).")
@click.option("--queue", type=click.IntRange(min=0), default=D["queue"], show_default=True,
              help="Requests allowed to wait for an inference; more get 503 with Retry-After.")
@click.option("--max-inferences", type=click.IntRange(min=1), default=D["max_inferences"], show_default=True,
              help="Images through the model for one request (each frame, each cell of a map); 413 beyond.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=D["read_timeout_s"], show_default=True,
              help="Seconds a client may take to send its upload (408 beyond).")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=D["header_timeout_s"], show_default=True,
              help="Seconds a connection may take to send a request's headers (closed beyond).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header is NAME (any port), e.g. behind a proxy; repeatable. "
                   "Others than this server's own addresses get 421 (DNS rebinding).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: all cores).")
@click.option("--providers", metavar="LIST", default=None,
              help="onnxruntime execution providers, comma-separated (e.g. CUDA,CPU), or 'auto'. Default: CPU.")
@click.option("--frames", type=click.Choice(["middle", "all"]), default=D["frames"], show_default=True,
              help="Multi-frame DICOM default (a request may say ?frames=).")
@click.option("--trust", metavar="PUBLIC.pem[,PIN]", default=None,
              help="Refuse to start unless the bundle's signature (model.sig, `tumor-edge sign`) verifies with this "
                   "EC public key, covers every file unchanged, and binds the bytes that run. Pins: "
                   "PUBLIC.pem,min-version=UTC-TIME refuses older releases; PUBLIC.pem,bundle=SHA256 this signed "
                   "bundle only. Default: $TUMOR_EDGE_TRUST (set but empty is an error).")
@click.pass_context
def serve(ctx: click.Context, model: str | None, token: str | None, read_timeout: float, header_timeout: float,
          providers: str | None, trust: str | None, **options: Any) -> None:
    """Serve the classifier over HTTP: POST /v1/classify, GET /v1/model, GET /healthz, a web page at /.

    Listens on loopback by default. Needs the `serve` extra (pip install 'tumor-edge[serve]'). Research tool,
    not a diagnostic device.
    """
    from tumor_edge.serve.server import serve as run
    from tumor_edge.signing.trust import trust_policy

    policy = trust_policy(model, trust)  # before the port opens
    provider_list = tuple(p.strip() for p in providers.split(",") if p.strip()) if providers else None
    run(ServeConfig(model=model, token=token or None, read_timeout_s=read_timeout, header_timeout_s=header_timeout,
                    providers=provider_list, debug=bool(ctx.obj and ctx.obj.get("debug")), trust=policy, **options))
