"""Each running request's deadline and client watch, kept by one timer per event loop.

An ``asyncio.timeout`` per request armed a timer (a heap entry, cancelled when the
response starts), and so did each request's wait before it listens for its client hanging
up. Instead every request in flight is in ``Running``, and one timer per event loop sweeps
them every ``SWEEP_S`` while any runs: it arms the deadlines that fall before its next
sweep (at their exact time) and starts the listeners of the requests that have waited
``WATCH_AFTER_S``. A request costs two set operations and at most one timer of its own;
the sweep, one check per request in flight (one per open connection at most) every
``SWEEP_S``, and no timer at all on an idle loop.
``RequestWatch`` cancels its work past the deadline as ``asyncio.timeout`` does (the same
cancel, ``uncancel`` and TimeoutError).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Any

from starlette.types import Message, Receive

from service.errors import BodyTooLargeError

__all__ = ["SWEEP_S", "WATCH_AFTER_S", "RequestWatch", "Running"]

# A request that has not answered this long after its body arrived starts listening for its
# client hanging up: quicker ones never pay for the listener (a task per request).
WATCH_AFTER_S = 0.05
SWEEP_S = 0.02


class RequestWatch:
    """A request's deadline and its client watch, entered (``async with``) around its work.

    ``receive`` is the request's, counting the body against ``limit``; once the body is in,
    ``on_body_done`` runs. The deadline is ``at`` (loop time; ``math.inf``: none): past it
    the work is cancelled where it waits (the batcher drops its queued images) and the
    block raises TimeoutError, as ``asyncio.timeout`` would (``expired`` tells it from the
    work's own). With ``listen``, once the request has waited ``WATCH_AFTER_S`` a task
    listens for the client hanging up; if it does before the response starts, the deadline
    is brought forward to now and ``gone`` is set. ``Running``'s sweep arms the deadline
    (a timer at ``at``) only when it falls before the next sweep."""

    def __init__(
        self,
        receive: Receive,
        limit: int,
        *,
        at: float,
        listen: bool,
        on_body_done: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._on_body_done = on_body_done
        self.loop = asyncio.get_running_loop()
        self.at = at
        # A model load finishes whatever the caller does: nothing to listen for.
        self._listen_at = self.loop.time() + WATCH_AFTER_S if listen else math.inf
        self._listener: asyncio.Task[None] | None = None
        self._timer: asyncio.Handle | None = None  # the armed deadline
        self._task: asyncio.Task[Any] | None = None  # the work, while entered
        self._cancelling = 0
        self._expiring = False
        self.expired = False
        self.body_done = False
        self.responded = False
        self.gone = False

    async def __aenter__(self) -> RequestWatch:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a request's watch is entered in a task")
        self._task, self._cancelling = task, task.cancelling()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        task, self._task = self._task, None
        self._disarm()
        if self._expiring and task is not None:
            self._expiring, self.expired = False, True
            # Our cancel, and no other since: ours to answer (as ``asyncio.timeout``).
            if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error

    def _expire(self) -> None:
        self._timer = None
        if self._task is not None and not self._expiring:
            self._expiring = True
            self._task.cancel()

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise BodyTooLargeError(
                    f"the body exceeds the limit of {self._limit} bytes", limit=self._limit
                )
            if not message.get("more_body", False):
                self.body_done = True
                if self._on_body_done is not None:
                    self._on_body_done()
        return message

    def respond(self) -> None:
        """The response starts: from now on the request is not cut off."""
        self.responded = True
        self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def move(self, at: float) -> None:
        """The deadline is ``at`` from now on (``math.inf``: none)."""
        self.at = at
        self._disarm()
        self.tick(self.loop.time())

    def tick(self, now: float) -> None:
        """Arm the deadline when it comes before the next sweep; listen once it is time."""
        if self.responded:
            return
        if self._timer is None and self.at - now < SWEEP_S:
            self._timer = self.loop.call_at(self.at, self._expire)
        if now >= self._listen_at and self.body_done:
            self._listen_at = math.inf
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        # With the body read, the server's next message is the disconnect (which it also
        # sends once the response is complete: hence ``responded``).
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded:
            self.gone = True
            self._disarm()
            self._timer = self.loop.call_soon(self._expire)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()


class Running:
    """The requests in flight (entered watches), with one sweeping timer per event loop
    that has any (each test client runs its own loop)."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, set[RequestWatch]] = {}
        self._timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}

    def add(self, watch: RequestWatch) -> None:
        loop = watch.loop
        running = self._by_loop.get(loop)
        if running is None:
            running = self._by_loop[loop] = set()
            self._timers[loop] = loop.call_later(SWEEP_S, self._sweep, loop)
        running.add(watch)
        watch.tick(loop.time())  # a deadline already due (the drain's end) is armed now

    def remove(self, watch: RequestWatch) -> None:
        loop = watch.loop
        running = self._by_loop[loop]
        running.discard(watch)
        if not running:
            del self._by_loop[loop]
            self._timers.pop(loop).cancel()

    def __iter__(self) -> Iterator[RequestWatch]:
        for running in list(self._by_loop.values()):
            yield from list(running)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for watch in list(self._by_loop[loop]):
            watch.tick(now)
        self._timers[loop] = loop.call_later(SWEEP_S, self._sweep, loop)
