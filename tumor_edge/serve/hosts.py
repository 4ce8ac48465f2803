"""The Host header check: the server answers only requests addressed to it by one of its own names.

DNS rebinding: a page from attacker.example makes that name resolve to 127.0.0.1, and its script then talks to a
tokenless loopback server as if it were its own origin; the browser still sends `Host: attacker.example`.
Refusing every Host that is not one of this server's names (421, JSON) closes that door. The names: localhost,
127.0.0.1 and [::1] and the bound address, with the bound port when a port is given; when bound to a wildcard
address (0.0.0.0, ::), any IP address too (a page reached by an IP address cannot be rebound: its origin is that
address); plus each `--allow-host NAME`, on any port (a proxy in front may use its own). Starlette's
TrustedHostMiddleware is not used: it answers in plain text, not JSON, and ignores the port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from tumor_edge.serve.errors import error_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's (name, port): lower case, IPv6 without brackets, no trailing dot; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or _ip(name) is None or (rest and not rest.startswith(":")):
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


def shown(name: str) -> str:
    return f"[{name}]" if ":" in name else name


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
        address = _ip(bound)
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
        if (name in self.own or (self.any_ip and _ip(name) is not None)) and port in (None, self.port):
            return None
        names = ", ".join(shown(n) for n in sorted(self.own)) + (", any IP address" if self.any_ip else "")
        extra = f" (and to {', '.join(sorted(self.allowed))} on any port)" if self.allowed else ""
        return 421, (f"Host {value[:100]!r} is not this server, which answers to {names} on port {self.port}"
                     f"{extra}. Refused, as a page reaching it through another name may be a DNS-rebinding attack; "
                     f"start the server with --allow-host NAME to accept a name")


class HostCheck:
    """ASGI middleware: every HTTP request passes `rule` before it reaches the app."""

    def __init__(self, app, rule: HostRule):
        self.app = app
        self.rule = rule

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":  # no websocket routes exist; lifespan has no Host
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            refused = (400, "more than one Host header") if len(hosts) > 1 else self.rule.refusal(
                hosts[0] if hosts else None)
            if refused is not None:
                await error_response(*refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
