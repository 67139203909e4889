"""Each running request's deadline and client watch, kept by one timer per event loop.

A request's deadline is an ``asyncio.Timeout`` entered with no time: arming one costs a
timer (a heap entry, a cancel when the response starts), and so did each request's wait
before it listens for its client hanging up. Instead every request in flight is in
``Running``, and one timer per event loop sweeps them every ``SWEEP_S`` while any runs:
it arms the deadlines that fall before its next sweep (at their exact time) and starts the
listeners of the requests that have waited ``WATCH_AFTER_S``. A request costs two dict
operations; the sweep, at concurrency 32, a few microseconds every ``SWEEP_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator

from starlette.types import Message, Receive

from service.errors import BodyTooLargeError

__all__ = ["SWEEP_S", "WATCH_AFTER_S", "ClientWatch", "Running"]

# A request that has not answered this long after its body arrived starts listening for its
# client hanging up: quicker ones never pay for the listener (a task per request).
WATCH_AFTER_S = 0.05
SWEEP_S = 0.02


class ClientWatch:
    """The request's ``receive``, counting the body against the limit, and its deadline
    (``at``, loop time; ``math.inf`` for none). Once the body is in, ``on_body_done`` runs,
    and (``listen``) once the request has waited ``WATCH_AFTER_S`` a task listens for the
    client hanging up and, if it does before the response starts, expires the deadline: the
    app is cancelled where it waits (the batcher drops its queued images) and ``gone`` is
    set."""

    def __init__(
        self,
        receive: Receive,
        limit: int,
        deadline: asyncio.Timeout,
        *,
        at: float,
        listen: bool,
        on_body_done: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0
        self._deadline = deadline
        self._on_body_done = on_body_done
        self._task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.at = at
        self._armed = False
        # A model load finishes whatever the caller does: nothing to listen for.
        self._listen_at = self.loop.time() + WATCH_AFTER_S if listen else math.inf
        self.body_done = False
        self.responded = False
        self.gone = False

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
        if self._armed:
            self._armed = False
            try:  # noqa: SIM105 (contextlib.suppress costs a context manager here)
                self._deadline.reschedule(None)
            except RuntimeError:  # asyncio's word for "not running": expired or over
                pass

    def move(self, at: float) -> None:
        """The deadline is ``at`` from now on (``math.inf``: none)."""
        self.at = at
        self._disarm()
        self.tick(self.loop.time())

    def tick(self, now: float) -> None:
        """Arm the deadline when it comes before the next sweep; listen once it is time."""
        if self.responded:
            return
        if not self._armed and self.at - now < SWEEP_S:
            self._armed = True
            with contextlib.suppress(RuntimeError):  # expired, or over
                self._deadline.reschedule(self.at)
        if now >= self._listen_at and self.body_done:
            self._listen_at = math.inf
            self._task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        # With the body read, the server's next message is the disconnect (which it also
        # sends once the response is complete: hence ``responded``).
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responded:
            self.gone = True
            with contextlib.suppress(RuntimeError):  # already expired or over
                self._deadline.reschedule(self.loop.time())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Running:
    """The requests in flight (entered deadline -> watch), with one sweeping timer per event
    loop that has any (each test client runs its own loop)."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, dict[asyncio.Timeout, ClientWatch]] = {}
        self._timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}

    def add(self, deadline: asyncio.Timeout, watch: ClientWatch) -> None:
        loop = watch.loop
        running = self._by_loop.get(loop)
        if running is None:
            running = self._by_loop[loop] = {}
            self._timers[loop] = loop.call_later(SWEEP_S, self._sweep, loop)
        running[deadline] = watch
        watch.tick(loop.time())  # a deadline already due (the drain's end) is armed now

    def remove(self, deadline: asyncio.Timeout, watch: ClientWatch) -> None:
        loop = watch.loop
        running = self._by_loop[loop]
        del running[deadline]
        if not running:
            del self._by_loop[loop]
            self._timers.pop(loop).cancel()

    def __iter__(self) -> Iterator[ClientWatch]:
        for running in list(self._by_loop.values()):
            yield from list(running.values())

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for watch in list(self._by_loop[loop].values()):
            watch.tick(now)
        self._timers[loop] = loop.call_later(SWEEP_S, self._sweep, loop)
