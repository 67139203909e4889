"""The request deadlines and client watches that one timer per event loop keeps
(service.api.watch): exact deadlines, late listeners, no timer once the loop is idle."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from service.api.watch import SWEEP_S, WATCH_AFTER_S, RequestWatch, Running


class Client:
    """An ASGI ``receive``: the body in one message, then (when ``leaves``) a disconnect."""

    def __init__(self, *, leaves_after_s: float | None = None) -> None:
        self.calls = 0
        self._leaves_after_s = leaves_after_s

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": b"x" * 10, "more_body": False}
        if self._leaves_after_s is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(self._leaves_after_s or 0)
        return {"type": "http.disconnect"}


async def run(
    running: Running, client: Client, *, deadline_s: float, work_s: float, respond: bool = False
) -> tuple[str, float, RequestWatch]:
    """One request: read the body, then 'work' for ``work_s``; how it ended, and when."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    watch = RequestWatch(client.receive, 100, at=started + deadline_s, listen=True)
    try:
        async with watch:
            running.add(watch)
            try:
                await watch.receive()
                if respond:
                    watch.respond()
                await asyncio.sleep(work_s)
            finally:
                running.remove(watch)
    except TimeoutError:
        return "timed out", loop.time() - started, watch
    finally:
        watch.close()
    return "done", loop.time() - started, watch


def test_a_deadline_expires_at_its_time_not_at_a_sweep() -> None:
    running = Running()
    deadline_s = 3.5 * SWEEP_S  # between two sweeps
    outcome, seconds, _ = asyncio.run(run(running, Client(), deadline_s=deadline_s, work_s=1.0))
    assert outcome == "timed out"
    assert deadline_s <= seconds < deadline_s + 0.01


def test_a_deadline_already_past_expires_at_once() -> None:
    outcome, seconds, _ = asyncio.run(run(Running(), Client(), deadline_s=-1.0, work_s=1.0))
    assert outcome == "timed out" and seconds < SWEEP_S


def test_a_response_that_has_started_is_not_cut_off() -> None:
    # Armed (due before the first sweep), then the response starts.
    outcome, _, _ = asyncio.run(
        run(Running(), Client(), deadline_s=SWEEP_S / 2, work_s=2 * SWEEP_S, respond=True)
    )
    assert outcome == "done"


def test_the_listener_starts_only_for_a_request_that_waits() -> None:
    quick = Client()
    outcome, _, watch = asyncio.run(run(Running(), quick, deadline_s=5, work_s=WATCH_AFTER_S / 4))
    assert outcome == "done" and quick.calls == 1 and not watch.gone  # no listener task

    slow = Client()
    outcome, _, watch = asyncio.run(run(Running(), slow, deadline_s=5, work_s=3 * WATCH_AFTER_S))
    assert outcome == "done" and slow.calls == 2 and not watch.gone  # listened; stayed


def test_a_client_that_leaves_expires_the_deadline() -> None:
    client = Client(leaves_after_s=0.05)
    outcome, seconds, watch = asyncio.run(run(Running(), client, deadline_s=5, work_s=5))
    assert outcome == "timed out" and watch.gone
    assert WATCH_AFTER_S + 0.05 <= seconds < WATCH_AFTER_S + SWEEP_S + 0.05 + 0.05


def test_moving_a_deadline_earlier_and_later() -> None:
    async def main() -> tuple[float, float]:
        running = Running()
        # Earlier (the drain's end): cut at the new time.
        task = asyncio.ensure_future(run(running, Client(), deadline_s=5, work_s=5))
        await asyncio.sleep(0.01)
        (watch,) = list(running)
        watch.move(asyncio.get_running_loop().time() + 0.05)
        cut = await task
        # Later (a control request's body is in): an armed deadline is lifted.
        task = asyncio.ensure_future(run(running, Client(), deadline_s=SWEEP_S / 2, work_s=0.1))
        await asyncio.sleep(0)
        (watch,) = list(running)
        watch.move(math.inf)
        kept = await task
        assert cut[0] == "timed out" and kept[0] == "done"
        return cut[1], kept[1]

    cut_s, kept_s = asyncio.run(main())
    assert 0.06 <= cut_s < 0.08 and kept_s >= 0.1


def test_no_timer_is_left_once_a_loop_is_idle_and_loops_are_kept_apart() -> None:
    running = Running()

    errors: list[dict[str, Any]] = []

    async def two() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        await asyncio.gather(
            run(running, Client(), deadline_s=5, work_s=0.05),
            run(running, Client(), deadline_s=5, work_s=0.1),
        )
        await asyncio.sleep(3 * SWEEP_S)  # a sweep left scheduled would run (and fail) here

    asyncio.run(two())
    asyncio.run(two())  # a second loop, after the first closed: its own timer
    assert list(running) == [] and errors == []
    assert not running._timers, "a sweep timer outlived the loop's last request"


@pytest.mark.parametrize("concurrency", [1, 64])
def test_every_request_is_swept_at_any_concurrency(concurrency: int) -> None:
    async def main() -> list[tuple[str, float, RequestWatch]]:
        running = Running()
        return await asyncio.gather(
            *(run(running, Client(), deadline_s=0.05, work_s=1.0) for _ in range(concurrency))
        )

    for outcome, seconds, _ in asyncio.run(main()):
        assert outcome == "timed out" and 0.05 <= seconds < 0.07


def test_the_works_own_timeout_is_not_the_deadline() -> None:
    async def main() -> RequestWatch:
        watch = RequestWatch(Client().receive, 100, at=math.inf, listen=False)
        with pytest.raises(TimeoutError):
            async with watch:
                async with asyncio.timeout(0.01):  # the work's own
                    await asyncio.sleep(1)
        return watch

    assert asyncio.run(main()).expired is False


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    """Cancelled by someone else too (the server shutting down) as the deadline passes: the
    CancelledError goes on, as with ``asyncio.timeout``."""

    async def main() -> tuple[str, int, bool]:
        watches: list[RequestWatch] = []

        async def work() -> str:
            watches.append(RequestWatch(Client().receive, 100, at=math.inf, listen=False))
            async with watches[0]:
                await asyncio.sleep(1)
            return "finished"

        task = asyncio.ensure_future(work())
        await asyncio.sleep(0.01)
        watches[0]._expire()  # the deadline's timer fires: our cancel...
        task.cancel()  # ...and theirs, before the task runs again
        try:
            return await task, task.cancelling(), watches[0].expired
        except asyncio.CancelledError:
            return "cancelled", task.cancelling(), watches[0].expired

    assert asyncio.run(main()) == ("cancelled", 1, True)


def test_a_deadline_brought_to_now_cuts_at_the_next_wait() -> None:
    async def main() -> None:
        watch = RequestWatch(Client().receive, 100, at=math.inf, listen=False)
        try:
            async with watch:
                watch.move(asyncio.get_running_loop().time())  # the cancel is scheduled...
                await asyncio.sleep(0)  # ...and lands at the first wait after it
                await asyncio.sleep(0)
        except TimeoutError:
            assert watch.expired
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
            return
        raise AssertionError("not cut")

    asyncio.run(main())
