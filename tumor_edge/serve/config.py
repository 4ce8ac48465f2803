"""What `tumor-edge serve` is told, and the one rule about where it may listen. The defaults are the safe ones:
loopback only, one inference at a time (it already uses every core) and a short queue."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

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
