"""What one request may cost the server, and how its work stops.

Bounded concurrency in two stages, receiving uploads then a few inferences with a short queue, and an immediate
503 beyond either: "busy, retry" at once keeps latency and memory flat. The stages are separate so a body that
trickles in holds an upload place, never an inference place.

Every inference passes one meter. The work runs on a thread the event loop cannot interrupt, so every batch the
engine runs is first charged to the budget of the request on that thread, and refused past its cap, once its
client has gone, or at shutdown: the work stops between two batches. Batches take turns first come first served,
so a short request runs between two batches of a long one. The refusal is a BaseException, as a cancellation is:
the runtime turns an Exception into a failed row, and a stop is not that.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
_running = threading.local()  # .budget: the budget of the request whose work runs on this thread


class Busy(Exception):
    """Every place is taken. The message is the reason a client reads."""


class Admission:
    """`async with admission.enter():` holds a place (raises Busy when none), then `async with admission.slot()`
    runs one inference. Used from one event loop only, so the counter needs no lock."""

    def __init__(self, concurrency: int, queue: int):
        self.capacity = concurrency + queue
        self.admitted = 0
        self._slots = asyncio.Semaphore(concurrency)  # bound to the event loop that first waits on it

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
        async with self._slots:
            yield


@dataclass
class UploadStage:
    """Bodies being received: at most `places` at once, `per_client` from one client address, `budget_bytes`
    held in memory by them together. Used from one event loop only, so the counters need no lock."""

    places: int
    per_client: int
    budget_bytes: int
    by_client: Counter[str] = field(default_factory=Counter)
    bytes_held: int = 0

    @property
    def receiving(self) -> int:
        return sum(self.by_client.values())

    @asynccontextmanager
    async def enter(self, client: str):
        """One upload's place; yields `take(n)`, which books `n` more received bytes (Busy when the budget is
        spent). What it booked is given back when the upload leaves."""
        if self.by_client[client] >= self.per_client:
            raise Busy(f"{self.per_client} uploads from your address are already arriving")
        if self.receiving >= self.places:
            raise Busy(f"{self.places} uploads already arriving")
        self.by_client[client] += 1
        held = 0

        def take(n: int) -> None:
            nonlocal held
            if self.bytes_held + n > self.budget_bytes:
                raise Busy(f"uploads in progress hold {self.budget_bytes >> 20} MiB, all this server receives at once")
            self.bytes_held += n
            held += n

        try:
            yield take
        finally:
            self.bytes_held -= held
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


class Stopped(BaseException):
    """The request's work was stopped between two batches; `status` and `reason` are its answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Budget:
    """One request's inference cap, and the reasons its work may stop (the server's `stopping`, its client)."""

    limit: int
    stopping: threading.Event
    used: int = 0
    client_gone: bool = False

    def charge(self, images: int) -> None:
        if self.stopping.is_set():
            raise Stopped(503, "the server is shutting down; retry once it is back")
        if self.client_gone:
            raise Stopped(499, "the client disconnected")
        if self.used + images > self.limit:
            raise Stopped(413, f"this scan needs more than {self.limit} inferences, the most this server runs for "
                               f"one request: send fewer frames, or frames=middle")
        self.used += images


class Turns:
    """At most `places` batches at the engine at once; the others wait in the order they came."""

    def __init__(self, places: int):
        self.places = places
        self._running = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def turn(self) -> Iterator[None]:
        me = object()
        with self._changed:
            self._waiting.append(me)
            self._changed.wait_for(lambda: self._waiting[0] is me and self._running < self.places)
            self._waiting.popleft()
            self._running += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


class MeteredBackend:
    """An engine whose `run` first charges its batch to the running request's budget (no budget: not charged),
    then waits for its turn."""

    def __init__(self, backend: Any, turns: Turns):
        self._backend = backend
        self._turns = turns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def run(self, batch):
        budget = getattr(_running, "budget", None)
        if budget is not None:
            budget.charge(len(batch))
        with self._turns.turn():
            return self._backend.run(batch)


def meter_engine(classifier: Any, places: int) -> None:
    if not isinstance(classifier.backend, MeteredBackend):
        classifier.backend = MeteredBackend(classifier.backend, Turns(places))


def _charged(budget: Budget, work: Callable[[], T]) -> T:
    budget.charge(0)  # stopped while it waited for its turn: it does not start
    _running.budget = budget
    try:
        return work()
    finally:
        _running.budget = None


async def run_charged(budget: Budget, work: Callable[[], T],
                      receive: Callable[[], Coroutine[Any, Any, dict]]) -> T:
    """`work()` on a worker thread, charged to `budget`; while it runs, `receive` (the request's ASGI channel, its
    body already read) is watched for the client's disconnect, which stops the work at its next batch."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        budget.client_gone = True

    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(_charged, budget, work)
        except BaseException as err:  # raised inside the group it would come out wrapped in an exception group
            failure = err
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result
