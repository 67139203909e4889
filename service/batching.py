"""Dynamic batching: requests from many clients become one ONNX Runtime call.

One worker thread per model version takes whatever has queued while the previous batch ran
(up to ``max_batch_size`` images), optionally waits ``max_queue_delay`` for more, runs it,
and hands each request its rows back. At concurrency 1 nothing waits: a lone request runs as
soon as it arrives. The queue is bounded in images; a full queue refuses at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceededError, ModelUnavailableError, OverloadedError

__all__ = ["BatchObserver", "Batcher"]

log = logging.getLogger(__name__)

BatchObserver = Callable[[int, float], None]  # (images in the batch, seconds of inference)


@dataclass(eq=False)
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return len(self.array)


def _resolve(future: asyncio.Future[np.ndarray], result: np.ndarray | BaseException) -> None:
    if future.done():  # cancelled by a deadline: the result is discarded
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    """Collects (n, ...) arrays from coroutines and runs ``run`` on their concatenation."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        name: str,
        max_batch_size: int,
        max_queue_delay_s: float,
        capacity: int,
        observe: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.capacity = capacity
        self._observe = observe
        self._queue: deque[_Item] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting (not yet running)."""
        return self._queued_images

    @property
    def idle(self) -> bool:
        return self._queued_images == 0 and self._busy == 0

    async def submit(self, array: np.ndarray, *, timeout_s: float | None = None) -> np.ndarray:
        """Queue ``array`` (n, ...) and wait for the n result rows."""
        loop = asyncio.get_running_loop()
        item = _Item(array, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise ModelUnavailableError(f"model {self.name} is being unloaded")
            if self._queued_images + len(item) > self.capacity and self._queued_images:
                raise OverloadedError(
                    f"model {self.name} has {self._queued_images} images queued "
                    f"(capacity {self.capacity}); retry shortly",
                    retry_after_s=1,
                    queued=self._queued_images,
                    capacity=self.capacity,
                )
            self._queue.append(item)
            self._queued_images += len(item)
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            self._discard(item)
            raise DeadlineExceededError(
                f"the request did not finish within {timeout_s:g} s", timeout_s=timeout_s
            ) from None
        except asyncio.CancelledError:
            self._discard(item)
            raise

    def _discard(self, item: _Item) -> None:
        """Drop a queued item whose caller gave up; a running one finishes unseen."""
        with self._cond:
            if item in self._queue:
                self._queue.remove(item)
                self._queued_images -= len(item)
        item.future.cancel()

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            if self.max_queue_delay_s > 0 and self._queued_images < self.max_batch_size:
                deadline = self._queue[0].enqueued + self.max_queue_delay_s
                while (
                    self._queued_images < self.max_batch_size
                    and not self._closed
                    and (left := deadline - time.perf_counter()) > 0
                ):
                    self._cond.wait(left)
            items = [self._queue.popleft()]
            size = len(items[0])
            while self._queue and size + len(self._queue[0]) <= self.max_batch_size:
                items.append(self._queue.popleft())
                size += len(items[-1])
            self._queued_images -= size
            self._busy += 1
            return items

    def _loop(self) -> None:
        while (items := self._take()) is not None:
            try:
                self._run_batch(items)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _run_batch(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.done()]
        if not live:
            return
        batch = live[0].array if len(live) == 1 else np.concatenate([i.array for i in live])
        started = time.perf_counter()
        try:
            outputs = (
                np.concatenate(
                    [
                        self._run(batch[i : i + self.max_batch_size])
                        for i in range(0, len(batch), self.max_batch_size)
                    ]
                )
                if len(batch) > self.max_batch_size
                else self._run(batch)
            )
        except Exception as exc:  # reported to every caller of this batch
            log.exception("inference failed for model %s", self.name)
            for item in live:
                item.loop.call_soon_threadsafe(_resolve, item.future, exc)
            return
        if self._observe is not None:
            self._observe(len(batch), time.perf_counter() - started)
        offset = 0
        for item in live:
            rows = outputs[offset : offset + len(item)]
            offset += len(item)
            item.loop.call_soon_threadsafe(_resolve, item.future, rows)

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop taking work; let what is queued finish, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
