"""The Host header and cross-site checks, before any request reaches the app.

DNS rebinding: a page from attacker.example makes that name resolve to 127.0.0.1 and talks to a tokenless
loopback server, but the browser still sends `Host: attacker.example`; every Host that is not one of this
server's names (its addresses on its port, any IP address when bound to a wildcard, each --allow-host on any
port) gets 421. Cross-site: any page can make a browser POST a form here; a browser marks it (`Sec-Fetch-Site`,
`Origin`), and an unsafe method so marked gets 403 before its body is read. A request with neither header comes
from no browser and passes.

And the JSON error answer every refusal carries, here and in the app (`HttpError`, `error_response`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.serve.config import ip_of

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OWN_SITE = ("same-origin", "none")  # Sec-Fetch-Site values of the server's own page, or of a URL the user typed
DEFAULT_PORTS = {"http": 80, "https": 443}
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Research-Notice": RESEARCH_NOTICE,
                  "Cache-Control": "no-store"}


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers={**COMMON_HEADERS, **(headers or {})})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's (name, port): lower case, IPv6 without brackets, no trailing dot; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or ip_of(name) is None or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text = value.partition(":")
        port_text = port_text if colon else None
        if ":" in (port_text or ""):
            return None  # a bare IPv6 address: a Host header brackets it
    if port_text is not None and not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        return None
    name = name.rstrip(".")
    if not name or not all(c.isascii() and (c.isalnum() or c in ".-_:") for c in name):
        return None
    return name, int(port_text) if port_text is not None else None


@dataclass(frozen=True)
class HostRule:
    """Which Host headers are this server's (see the module's docstring)."""

    own: frozenset[str]
    allowed: frozenset[str]
    port: int
    any_ip: bool

    @classmethod
    def for_bind(cls, host: str, port: int, allow: Iterable[str] = ()) -> HostRule:
        bound = host.strip("[]").lower()
        address = ip_of(bound)
        wildcard = address is not None and address.is_unspecified
        own = set(LOOPBACK_NAMES) | ({str(address) if address else bound} if not wildcard else set())
        return cls(frozenset(own), frozenset(n.strip("[]").lower().rstrip(".") for n in allow), port, wildcard)

    def refusal(self, value: str | None) -> tuple[int, str] | None:
        """None for a Host this server answers to, else (status, the reason a client reads)."""
        if not value:
            return 400, "missing Host header (HTTP/1.1 requires one)"
        parsed = split_host(value)
        if parsed is None:
            return 400, f"Host header {value[:100]!r} is not a host name with an optional port"
        name, port = parsed
        if name in self.allowed:
            return None
        if (name in self.own or (self.any_ip and ip_of(name) is not None)) and port in (None, self.port):
            return None
        names = ", ".join(f"[{n}]" if ":" in n else n for n in sorted(self.own))
        names += ", any IP address" if self.any_ip else ""
        extra = f" (and to {', '.join(sorted(self.allowed))} on any port)" if self.allowed else ""
        return 421, (f"Host {value[:100]!r} is not this server, which answers to {names} on port {self.port}"
                     f"{extra}. Refused, as a page reaching it through another name may be a DNS-rebinding attack; "
                     f"start the server with --allow-host NAME to accept a name")


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the scheme's host and port that the Host header addresses."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    ours, theirs = split_host(host), split_host(parts.netloc)
    default = DEFAULT_PORTS.get(parts.scheme)
    if default is None or ours is None or theirs is None or origin != f"{parts.scheme}://{parts.netloc}":
        return False
    return (ours[0], ours[1] or default) == (theirs[0], theirs[1] or default)


def cross_site_refusal(method: str, host: str, origins: list[str], fetch_sites: list[str]) -> str | None:
    """Why an unsafe request that a browser marks as sent by another site's page is refused; None otherwise."""
    if method in SAFE_METHODS:
        return None
    foreign = [f"Sec-Fetch-Site: {v}" for v in fetch_sites if v not in OWN_SITE]
    foreign += [f"Origin: {v}" for v in origins if not same_origin(v, host)]
    if not foreign:
        return None
    return (f"cross-site {method} refused ({foreign[0][:120]!r}): a page of another site may not use this "
            f"server on its user's behalf; use the server's own page, or a client that is not a browser")


class HostCheck:
    """ASGI middleware: every HTTP request passes `rule` (the Host header), and an unsafe one the cross-site
    check, before it reaches the app."""

    def __init__(self, app, rule: HostRule):
        self.app = app
        self.rule = rule

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":  # no websocket routes exist; lifespan has no Host
            headers = {name: [v.decode("latin-1") for k, v in scope["headers"] if k == name]
                       for name in (b"host", b"origin", b"sec-fetch-site")}
            hosts = headers[b"host"]
            refused = (400, "more than one Host header") if len(hosts) > 1 else self.rule.refusal(
                hosts[0] if hosts else None)
            if refused is None:
                reason = cross_site_refusal(scope["method"], hosts[0], headers[b"origin"], headers[b"sec-fetch-site"])
                refused = (403, reason) if reason else None
            if refused is not None:
                await error_response(*refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
