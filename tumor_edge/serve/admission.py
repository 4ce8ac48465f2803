"""Bounded concurrency in two stages, receiving uploads then a few inferences with a short queue, and an
immediate 503 beyond either: "busy, retry" at once keeps latency and memory flat. The stages are separate so a
body that trickles in holds an upload place, never an inference place.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager


class Busy(Exception):
    """Every place is taken. The message is the reason a client reads."""


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
            raise Busy(f"{self.capacity} requests already in progress or queued")
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


class Receipt:
    """One upload's hold on the stage: `take(n)` books `n` more received bytes (Busy when the budget is spent)."""

    def __init__(self, stage: UploadStage):
        self.stage = stage
        self.held = 0

    def take(self, n: int) -> None:
        stage = self.stage
        if stage.bytes_held + n > stage.budget_bytes:
            raise Busy(f"uploads in progress hold {stage.budget_bytes >> 20} MiB, all this server receives at once")
        stage.bytes_held += n
        self.held += n


class UploadStage:
    """Bodies being received: at most `places` at once, `per_client` from one client address, `budget_bytes`
    held in memory by them together. Used from one event loop only, so the counters need no lock."""

    def __init__(self, places: int, per_client: int, budget_bytes: int):
        self.places = places
        self.per_client = per_client
        self.budget_bytes = budget_bytes
        self.by_client: Counter[str] = Counter()
        self.bytes_held = 0

    @property
    def receiving(self) -> int:
        return sum(self.by_client.values())

    @asynccontextmanager
    async def enter(self, client: str):
        if self.by_client[client] >= self.per_client:
            raise Busy(f"{self.per_client} uploads from your address are already arriving")
        if self.receiving >= self.places:
            raise Busy(f"{self.places} uploads already arriving")
        self.by_client[client] += 1
        receipt = Receipt(self)
        try:
            yield receipt
        finally:
            self.bytes_held -= receipt.held
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]
