"""The server's one error type: an HTTP status and the reason a client reads in the JSON body."""

from __future__ import annotations


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
