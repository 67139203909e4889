"""Where a request's images are decoded, and in how many jobs.

``service.decoding`` decodes images into rows on whatever thread runs it, within its
budgets; this decides which thread: the model's batcher thread, right before the batch,
when the process has one decode thread and the request is small (``on_batcher``: decoding
in the pool at the same time as inference would only make them share the core, and add a
hand-off), else the decode pool, in one job for a small request and one per thread for a
large one of several images (``prepare``, ``spread``). Never the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from PIL import Image

from service import tracing
from service.config import Settings
from service.decoding import (
    CancelToken,
    DecodeLimits,
    ImageFailure,
    Images,
    PixelBudget,
    decode_rows,
    image_error,
    open_all,
    pixels_of,
)
from service.metrics import Metrics
from service.model_card import InputSpec

__all__ = ["Decoder", "Elsewhere"]

T = TypeVar("T")


class Elsewhere(Exception):
    """Raised on the batcher's thread: these images are too large to decode there."""

    def __init__(self, opened: list[Image.Image]) -> None:
        super().__init__(len(opened))
        self.opened = opened


def _empty_batch(spec: InputSpec, size: int) -> np.ndarray:
    return np.empty(spec.shape(size), dtype=spec.numpy_dtype)


class Decoder:
    # With one decode thread, a request whose images hold at most this many pixels in all
    # (a 2048x2048 photo) is decoded on the batcher's thread right before its batch.
    # Larger ones go to the pool, so that one of them cannot hold up everyone's inference.
    serial_max_pixels = 4_194_304
    # In the pool, a request of several images holding more pixels than this is spread
    # over the pool's threads; a smaller one is decoded by one job, in one hand-off.
    spread_pixels = 1_048_576

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor, metrics: Metrics) -> None:
        self.executor = executor
        self.limits = DecodeLimits(settings.max_image_pixels, settings.max_request_pixels)
        self.budget = PixelBudget(settings.max_decoding_pixels)
        self.threads = max(1, getattr(executor, "_max_workers", 1))
        self._metrics = metrics

    def _decode(
        self,
        spec: InputSpec,
        name: str,
        images: Images,
        opened: list[Image.Image | None],
        out: np.ndarray,
        start: int,
        token: CancelToken,
        *,
        wait: bool = True,
    ) -> None:
        """``decode_rows`` with this model's stage metrics; a bad image as its domain error."""
        metrics = self._metrics
        decode = metrics.child(metrics.stages, "decode", name)
        preprocess = metrics.child(metrics.stages, "preprocess", name)

        def observe(decoded: float, preprocessed: float) -> None:
            decode.observe(decoded)
            preprocess.observe(preprocessed)

        try:
            decode_rows(
                opened,
                spec,
                out,
                start,
                budget=self.budget,
                token=token,
                observe=observe,
                wait=wait,
            )
        except ImageFailure as failure:
            raise image_error(failure, images) from failure.error

    def _open(self, images: Images, token: CancelToken) -> list[Image.Image]:
        try:
            return open_all(images, self.limits, token)
        except ImageFailure as failure:
            raise image_error(failure, images) from failure.error

    def _in_pool(self, spec: InputSpec, name: str, images: Images, token: CancelToken) -> object:
        """One pool job: every header, then every image when the request is small; a large
        request of several images comes back opened, to be spread over the pool."""
        opened: list[Image.Image | None] = list(self._open(images, token))
        if len(opened) > 1 and self.threads > 1 and pixels_of(opened) > self.spread_pixels:
            return opened
        batch = _empty_batch(spec, len(opened))
        self._decode(spec, name, images, opened, batch, 0, token)
        return batch

    def on_batcher(
        self, spec: InputSpec, name: str, images: Images, token: CancelToken
    ) -> np.ndarray:
        """``prepare`` for the batcher's thread: small requests only (``Elsewhere``)."""
        opened = self._open(images, token)
        if pixels_of(opened) > self.serial_max_pixels:
            raise Elsewhere(opened)
        batch = _empty_batch(spec, len(opened))
        # Counted in the budget, never waiting for it: the batcher must not stall behind
        # large decodes in the pool, and what it decodes is bounded by serial_max_pixels.
        self._decode(spec, name, images, list(opened), batch, 0, token, wait=False)
        return batch

    async def run_in_pool(self, call: Callable[[], T]) -> T:
        """``call()`` in the decode pool (in the request's trace): CPU work on request data
        never runs on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, tracing.in_context(call, waited="pool wait")
        )

    async def spread(
        self,
        spec: InputSpec,
        name: str,
        images: Images,
        opened: Sequence[Image.Image | None],
        token: CancelToken,
    ) -> np.ndarray:
        """Decode opened images in one pool job per thread, rows straight into the batch."""
        batch = _empty_batch(spec, len(opened))
        chunk = -(-len(opened) // min(len(opened), self.threads))
        jobs = [
            self.run_in_pool(
                functools.partial(
                    self._decode, spec, name, images, list(opened[i : i + chunk]), batch, i, token
                )
            )
            for i in range(0, len(opened), chunk)
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:  # chunks are in order: the first error is the earliest image
            if isinstance(result, BaseException):
                raise result
        return batch

    async def prepare(
        self, spec: InputSpec, name: str, images: Images, *, token: CancelToken | None = None
    ) -> np.ndarray:
        """Decode and preprocess ``images`` in the pool: (N, C, H, W) float32 in request
        order, or the domain error of the first image that fails."""
        token = token or CancelToken()
        try:
            result = await self.run_in_pool(
                functools.partial(self._in_pool, spec, name, images, token)
            )
            if isinstance(result, np.ndarray):
                return result
            return await self.spread(spec, name, images, result, token)  # type: ignore[arg-type]
        finally:
            token.cancel()  # a request that gave up stops its workers between images
