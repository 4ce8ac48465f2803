"""Bounded concurrency: a few inferences at once, a short queue, and an immediate 503 beyond it.

An overloaded server that accepts everything answers nobody in time and grows without bound; one that says
"busy, retry in N s" at once keeps its latency and memory flat and lets clients back off.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager


class Busy(Exception):
    """Every inference slot and queue place is taken."""


class Admission:
    """`async with admission.enter():` holds a place (raises Busy when none), then `async with admission.slot()`
    runs one inference. Used from one event loop only, so the counter needs no lock."""

    def __init__(self, concurrency: int, queue: int):
        self.capacity = concurrency + queue
        self.concurrency = concurrency
        self.admitted = 0
        self._slots: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def enter(self):
        if self.admitted >= self.capacity:
            raise Busy
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def slot(self):
        if self._slots is None:  # created inside the running loop
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            yield
