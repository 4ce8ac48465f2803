"""uvicorn's h11 protocol with a header timeout: a connection must finish each request's headers in time.

uvicorn keeps a fresh connection that sends nothing, or headers that stop half-way, open for good: a few hundred
such sockets exhaust the file descriptors. A timer runs until h11 has the complete head (and while a body nobody
will read is still arriving); when it fires the connection is closed, after a JSON 408 if a request had begun.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tumor_edge.serve.errors import COMMON_HEADERS


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
