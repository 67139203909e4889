"""The dynamic batcher: merges concurrent requests, splits results back, sheds load."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import ModelUnavailableError, OverloadedError


class Recorder:
    """A fake model: doubles its input, records batch sizes, can be held back."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.full: list[bool] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray, full: bool = True) -> tuple[np.ndarray, ...]:
        """Two outputs, as a model with layer outputs gives (the first alone when not
        ``full``): each caller gets its rows of both."""
        self.gate.wait(5)
        time.sleep(self.delay_s)
        self.batches.append(len(batch))
        self.full.append(full)
        return (batch * 2, batch.sum(axis=1)) if full else (batch * 2,)


def make(run: Recorder, **options: float) -> Batcher:
    settings = {"max_batch_size": 8, "max_queue_delay_s": 0.0, "capacity": 64} | options
    return Batcher(run, name="test", **settings)  # type: ignore[arg-type]


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    run = Recorder()
    batcher = make(run)

    async def main() -> list[tuple[np.ndarray, ...]]:
        run.gate.clear()  # hold the first batch so the others queue behind it
        first = asyncio.ensure_future(batcher.submit(np.full((1, 2), -1.0)))
        await asyncio.sleep(0.05)
        rest = [batcher.submit(np.full((2, 2), float(i))) for i in range(6)]
        tasks = [asyncio.ensure_future(r) for r in rest]
        await asyncio.sleep(0.05)
        run.gate.set()
        return [await first, *[await t for t in tasks]]

    results = asyncio.run(main())
    batcher.close()
    assert np.array_equal(results[0][0], np.full((1, 2), -2.0))
    assert np.array_equal(results[0][1], [-2.0])
    for i, (rows, sums) in enumerate(results[1:]):
        assert np.array_equal(rows, np.full((2, 2), 2.0 * i))
        assert np.array_equal(sums, [2.0 * i, 2.0 * i])
    assert run.batches[0] == 1 and max(run.batches[1:]) == 8  # 12 queued images: 8 + 4
    assert sum(run.batches) == 13


def test_the_outputs_beyond_the_first_run_only_for_a_batch_that_needs_them() -> None:
    """/v2 and explanations need the scores alone (``full=False``); a batch computes the
    rest (the trust summary) only when one of its callers needs it, and then for all."""
    run = Recorder()
    batcher = make(run)

    async def main() -> tuple[tuple[np.ndarray, ...], ...]:
        alone = await batcher.submit(np.ones((1, 2)), full=False)
        run.gate.clear()  # hold a batch so that the next two share one
        held = asyncio.ensure_future(batcher.submit(np.zeros((1, 2)), full=False))
        await asyncio.sleep(0.05)
        lean = asyncio.ensure_future(batcher.submit(np.ones((1, 2)), full=False))
        rich = asyncio.ensure_future(batcher.submit(np.ones((1, 2))))
        await asyncio.sleep(0.05)
        run.gate.set()
        await held
        return alone, await lean, await rich

    alone, lean, rich = asyncio.run(main())
    batcher.close()
    assert len(alone) == 1 and len(lean) == 2 and len(rich) == 2
    assert run.full == [False, False, True] and run.batches == [1, 1, 2]


def test_a_lone_request_does_not_wait_for_a_batch_to_fill() -> None:
    batcher = make(Recorder(), max_queue_delay_s=0.0)

    async def one() -> float:
        started = time.perf_counter()
        await batcher.submit(np.zeros((1, 2)))
        return time.perf_counter() - started

    assert asyncio.run(one()) < 0.05
    batcher.close()


def test_requests_larger_than_the_batch_run_in_chunks() -> None:
    run = Recorder()
    batcher = make(run)
    rows, sums = asyncio.run(batcher.submit(np.arange(40.0).reshape(20, 2)))
    batcher.close()
    assert np.array_equal(rows, np.arange(40.0).reshape(20, 2) * 2)
    assert np.array_equal(sums, np.arange(40.0).reshape(20, 2).sum(axis=1))
    assert run.batches == [8, 8, 4]


def test_a_full_queue_is_refused_at_once_and_recovers() -> None:
    run = Recorder()
    batcher = make(run, capacity=4)

    async def main() -> None:
        run.gate.clear()
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 2))))
        await asyncio.sleep(0.05)  # the worker holds it; the queue is empty again
        queued = asyncio.ensure_future(batcher.submit(np.zeros((4, 2))))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as caught:
            await batcher.submit(np.zeros((1, 2)))
        assert caught.value.retry_after_s >= 1
        run.gate.set()
        await running
        await queued
        assert len((await batcher.submit(np.zeros((4, 2))))[0]) == 4  # load gone: served again

    asyncio.run(main())
    batcher.close()


def test_a_deadline_discards_queued_work() -> None:
    """A request's deadline (the middleware's ``RequestWatch``, which cancels as
    ``asyncio.timeout`` does) cancels the caller where it waits: its images leave the
    queue and never run."""
    run = Recorder()
    batcher = make(run)

    async def main() -> None:
        run.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit(np.zeros((1, 2))))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await batcher.submit(np.zeros((3, 2)))
        assert batcher.depth == 0  # the abandoned request left the queue
        run.gate.set()
        await blocker

    asyncio.run(main())
    batcher.close()
    assert run.batches == [1]  # the timed-out images never ran


def test_errors_reach_every_caller_of_the_batch() -> None:
    def broken(batch: np.ndarray, full: bool) -> tuple[np.ndarray, ...]:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, name="broken", max_batch_size=4, max_queue_delay_s=0, capacity=8)
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(batcher.submit(np.zeros((1, 2))))
    batcher.close()


def test_a_closed_batcher_refuses_new_work() -> None:
    batcher = make(Recorder())
    batcher.close()
    with pytest.raises(ModelUnavailableError):
        asyncio.run(batcher.submit(np.zeros((1, 2))))
