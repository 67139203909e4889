"""Dynamic batching: requests from many clients become one ONNX Runtime call.

One worker thread per model version takes whatever has queued while the previous batch ran
(up to ``max_batch_size`` images), runs it, and hands each request its rows back. Thread
hand-offs are per batch, not per request: an event loop wakes the worker once per turn, after
every request that turn has queued its images (waking it per request would run batches of
one, each paying a thread switch), and the worker wakes each loop once per batch.
The queue is bounded in images; a full queue refuses at once.

A batch is also kept to about ``CALL_BUDGET_S`` of inference, from the per-image time the
worker measures as it goes: for a large model on a CPU (MobileNetV2: ~8 ms an image) a call
of 32 images would hold everyone for a quarter of a second and give nothing back, since
ONNX Runtime's per-call overhead is already negligible at a few images; the requests behind
it would wait a whole extra round (p99 at twice p50). Small models still get full batches.

A batch waits (at most ``max_queue_delay``) only for images that are already on their way:
callers announce them with ``incoming`` while they decode, and ``submit`` them when ready.
Nothing ever waits for requests that have not arrived, so a lone request (concurrency 1)
runs as soon as it is submitted: batching costs it nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from service import tracing
from service.errors import ModelRetiredError, OverloadedError

__all__ = ["BatchObserver", "Batcher", "Incoming", "Outputs"]

log = logging.getLogger(__name__)

BatchObserver = Callable[[int, float], None]  # (images in the batch, seconds of inference)
# What a model gives for a batch: one array or more (logits, then any layer outputs the
# service reads from the same pass), each with a row per input.
Outputs = tuple[np.ndarray, ...]

# ONNX Runtime's fixed cost per call is tens of microseconds: at 20 ms a call it is below
# 0.5%, and larger batches would only make the pipeline coarser.
CALL_BUDGET_S = 0.020


@dataclass(eq=False, slots=True)
class _Item:
    array: np.ndarray | None  # None until ``prepare`` has run (on the worker thread)
    images: int
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    prepare: Callable[[], np.ndarray] | None = None
    full: bool = True  # needs every output, not only the first (``Batcher``)
    enqueued: float = field(default_factory=time.perf_counter)
    context: tracing.Context | None = field(default_factory=tracing.current_context)

    def __len__(self) -> int:
        return self.images


@dataclass(eq=False)
class Incoming:
    """Images a caller has announced (``Batcher.incoming``) and not yet submitted."""

    images: int
    settled: bool = False


def _resolve(pairs: list[tuple[asyncio.Future[Outputs], Outputs | BaseException]]) -> None:
    """On the event loop: hand each waiting request its rows (or the batch's error)."""
    for future, result in pairs:
        if future.done():  # cancelled, or past its deadline: the result is discarded
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class Batcher:
    """Collects (n, ...) arrays from coroutines and runs ``run`` on their concatenation;
    each caller gets its rows of every output.

    ``run(batch, full)``: ``full`` is False when no caller of the batch asked for more than
    the first output (``submit(..., full=False)``: /v2 and explanations need the scores
    alone, classify also the trust summary), so that work is skipped for them."""

    def __init__(
        self,
        run: Callable[[np.ndarray, bool], Outputs],
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
        self._incoming = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0
        self._wake_pending: set[asyncio.AbstractEventLoop] = set()
        # Seconds per image of the last batches; their minimum is the model's cost (a
        # batch only ever takes longer than that: preemption, a busy machine, a GC pause).
        self._per_image: deque[float] = deque(maxlen=16)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting (not yet running)."""
        return self._queued_images

    @property
    def batch_limit(self) -> int:
        """Images per ONNX Runtime call: ``max_batch_size``, or fewer when the model is slow
        enough that a full batch would take much longer than ``CALL_BUDGET_S``."""
        if len(self._per_image) < 3:  # not measured yet
            return self.max_batch_size
        per_image = min(self._per_image)
        return max(1, min(self.max_batch_size, int(CALL_BUDGET_S / per_image)))

    @property
    def idle(self) -> bool:
        return self._queued_images == 0 and self._busy == 0

    @contextlib.contextmanager
    def incoming(self, images: int) -> Iterator[Incoming]:
        """Announce ``images`` that will be submitted (with the yielded ticket) once decoded:
        a batch that has room may wait up to ``max_queue_delay`` for them."""
        ticket = Incoming(images)
        with self._cond:
            self._incoming += images
        try:
            yield ticket
        finally:
            if not ticket.settled:  # never submitted (a bad image, a cancelled request)
                with self._cond:
                    self._settle(ticket)
                    self._cond.notify()

    def _settle(self, ticket: Incoming | None) -> None:
        if ticket is not None and not ticket.settled:
            ticket.settled = True
            self._incoming -= ticket.images

    async def submit(
        self,
        array: np.ndarray,
        *,
        ticket: Incoming | None = None,
        full: bool = True,
    ) -> Outputs:
        """Queue ``array`` (n, ...) and wait for the n result rows of each output (of the
        first alone, at least, when not ``full``). A caller that is cancelled (its request's
        deadline, its client gone) takes its images out of the queue."""
        loop = asyncio.get_running_loop()
        item = _Item(array, len(array), loop.create_future(), loop, full=full)
        return await self._wait(self._enqueue(item, ticket))

    async def submit_unprepared(
        self,
        images: int,
        prepare: Callable[[], np.ndarray],
        *,
        ticket: Incoming | None = None,
    ) -> Outputs:
        """Queue ``images`` whose array ``prepare()`` makes on the worker thread, just before
        their batch runs (what it raises goes to this caller only); wait for their rows.

        With one core, decoding there keeps decoding and inference from running at once
        and fighting over the core and its caches, and saves a hand-off to the pool."""
        loop = asyncio.get_running_loop()
        item = _Item(None, images, loop.create_future(), loop, prepare=prepare)
        return await self._wait(self._enqueue(item, ticket))

    def _enqueue(self, item: _Item, ticket: Incoming | None) -> _Item:
        with self._cond:
            self._settle(ticket)
            if self._closed:
                raise ModelRetiredError(f"model {self.name} is being unloaded")
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
        if item.loop not in self._wake_pending:
            self._wake_pending.add(item.loop)
            item.loop.call_soon(self._wake, item.loop)
        return item

    async def _wait(self, item: _Item) -> Outputs:
        try:
            return await item.future
        except asyncio.CancelledError:
            self._discard(item)
            raise

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """At the end of the loop's turn: everything this turn queued is there, wake the worker."""
        self._wake_pending.discard(loop)
        with self._cond:
            self._cond.notify()

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
            limit = self.batch_limit
            if self.max_queue_delay_s > 0:
                deadline = self._queue[0].enqueued + self.max_queue_delay_s
                while (
                    self._incoming
                    and self._queued_images < limit
                    and not self._closed
                    and (left := deadline - time.perf_counter()) > 0
                ):
                    self._cond.wait(left)
            items = [self._queue.popleft()]
            size = len(items[0])
            while self._queue and size + len(self._queue[0]) <= limit:
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

    def _infer(self, batch: np.ndarray, live: list[_Item]) -> Outputs | None:
        """Run ``batch`` in calls of at most ``batch_limit`` images; None when every caller
        has given up before the last call (the calls left would run for nobody)."""
        step = self.batch_limit
        full = any(item.full for item in live)
        outputs: list[Outputs] = []
        for start in range(0, len(batch), step):
            if start and all(item.future.done() for item in live):
                log.debug(
                    "model %s: dropping %d images nobody waits for", self.name, len(batch) - start
                )
                return None
            chunk = batch[start : start + step]
            started = time.perf_counter()
            outputs.append(self._run(chunk, full))
            seconds = time.perf_counter() - started
            self._per_image.append(seconds / len(chunk))
            if self._observe is not None:
                self._observe(len(chunk), seconds)
        if len(outputs) == 1:
            return outputs[0]
        return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))

    def _prepared(self, items: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, Exception]]]:
        """Items still awaited, with their arrays made; and those whose ``prepare`` failed."""
        ready: list[_Item] = []
        failed: list[tuple[_Item, Exception]] = []
        for item in items:
            if item.future.done():  # its caller gave up: nothing to prepare or run
                continue
            if item.prepare is not None:
                try:
                    with tracing.attached(item.context):  # decoded in its request's trace
                        item.array, item.prepare = item.prepare(), None
                except Exception as exc:  # a bad image: its caller's error, not the batch's
                    failed.append((item, exc))
                    continue
            ready.append(item)
        return ready, failed

    def _run_batch(self, items: list[_Item]) -> None:
        taken = time.perf_counter()
        for item in items:
            tracing.record("queue wait", item.context, item.enqueued, taken, images=len(item))
        live, failed = self._prepared(items)
        pairs: list[tuple[_Item, Outputs | BaseException]] = list(failed)
        if live:
            arrays = [item.array for item in live if item.array is not None]
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            try:
                served = [item.context for item in live]
                traced = {"batcher": self.name, "images": len(batch), "requests": len(live)}
                with tracing.batch_span("batch inference", served, **traced):
                    outputs = self._infer(batch, live)
            except Exception as exc:  # reported to every caller of this batch
                log.exception("inference failed for model %s", self.name)
                pairs += [(item, exc) for item in live]
            else:
                if outputs is not None:
                    ends = itertools.accumulate(len(item) for item in live)
                    pairs += [
                        (item, tuple([o[end - len(item) : end] for o in outputs]))
                        for item, end in zip(live, ends, strict=True)
                    ]
        by_loop: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[Outputs], Outputs | BaseException]],
        ] = {}
        for item, result in pairs:
            by_loop.setdefault(item.loop, []).append((item.future, result))
        for loop, resolved in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_resolve, resolved)

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop taking work; let what is queued finish, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
