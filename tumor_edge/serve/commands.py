"""`tumor-edge serve`: the classifier as a local HTTP API and web page. Its options (`ServeConfig`, whose defaults
click reads) and the one rule about where it may listen live here; the defaults are the safe ones: loopback only,
one inference at a time (it already uses every core) and a short queue. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any

import click

from tumor_edge.errors import ConfigError

TOKEN_ENV = "TUMOR_EDGE_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """Options of the server; click reads its defaults from here."""

    model: str | None = None
    model_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    max_body_mb: float = 32.0
    concurrency: int = 1  # inferences at once
    queue: int = 16  # requests waiting for an inference slot before 503
    read_timeout_s: float = 30.0  # a client slower than this to send its body gets 408
    header_timeout_s: float = 5.0  # a connection whose request headers are not complete by then is closed
    allow_hosts: tuple[str, ...] = ()  # Host header names accepted besides this server's own addresses
    upload_places: int = 64  # bodies being received at once (before admission), 503 beyond
    upload_places_per_client: int = 16  # of which from one client address
    upload_budget_bodies: int = 4  # bytes held by arriving bodies together: this many full-size bodies
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    frames: str = "middle"
    max_inferences: int = 256  # images through the model for one request (frames, map cells): 413 beyond
    debug: bool = False
    trust: object | None = None  # the signing policy (tumor_edge.signing.trust.TrustPolicy) the open stage binds

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def upload_budget_bytes(self) -> int:
        return self.upload_budget_bodies * self.max_body_bytes

    def validate(self) -> None:
        if self.concurrency < 1 or self.queue < 0 or self.max_inferences < 1:
            raise ConfigError("concurrency and the inferences per request must be at least 1, the queue at least 0")
        if self.max_body_bytes < 1024:
            raise ConfigError("the body size limit must be at least 1 KiB")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not between 0 and 65535")
        if not self.header_timeout_s > 0:
            raise ConfigError("the header timeout must be more than 0 s")
        if min(self.upload_places, self.upload_places_per_client, self.upload_budget_bodies) < 1:
            raise ConfigError("the upload stage needs at least one place and one body's worth of memory")
        for name in self.allow_hosts:
            check_host_name(name)
        if self.token is not None:
            check_token(self.token)
        check_bind(self.host, self.token, self.insecure)


def check_token(token: str) -> None:
    """A bearer token a client can send: visible ASCII, no spaces (any other character could never match a header
    and would lock every client out)."""
    if not token or not all("!" <= c <= "~" for c in token):
        raise ConfigError("the --token must be visible ASCII characters without spaces (a bearer token as RFC 6750 "
                          "defines it); other characters cannot be sent in an HTTP header")


def check_host_name(name: str) -> None:
    """An --allow-host value: a host name or address as a Host header carries it, without a port."""
    plain = name.strip("[]")
    if not plain or not all(c.isalnum() or c in ".-_:" for c in plain) or (":" in plain and ip_of(plain) is None):
        raise ConfigError(f"--allow-host {name!r} is not a host name or address (give it without a port or scheme)")


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `text` writes (without brackets), or None when it is a name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine (127.0.0.0/8, ::1, localhost)."""
    address = ip_of(host.strip("[]"))
    # a host name other than localhost may resolve to anything
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Listening beyond this machine exposes scans and compute to the network: it needs a token, or the user's
    explicit word that the network is trusted."""
    if is_loopback(host) or token or insecure:
        return
    raise ConfigError(f"refusing to listen on {host} (not loopback) without a bearer token: pass --token "
                      f"(or set {TOKEN_ENV}), or --insecure if this network is trusted")


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
