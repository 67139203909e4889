"""The data plane: classification, feature maps and raw tensor inference, with no HTTP inside.

Every protocol (the native API, the Open Inference Protocol, the web page) calls this; nothing
else decodes, batches or runs a model. No image work ever happens on the event loop: images
are decoded and preprocessed (``service.decoding``, within its per-image, per-request and
per-process budgets) on the model's batcher thread right before their batch when the process
has one decode thread and the request is small, and in the decode pool otherwise. The rows
then go through the model version's batcher. A request that gives up (deadline, client gone)
stops its decoding between images and leaves the batch queue.

A request holds the model version it resolved; if that version is swapped out (a reload)
before its images queue, it runs on the version serving now instead of failing.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image
from prometheus_client import Histogram

from service.batching import Incoming
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
from service.errors import (
    DeadlineExceededError,
    InvalidParameterError,
    ModelOutputError,
    ModelRetiredError,
    UnknownLayerError,
)
from service.graph import Layer
from service.metrics import Metrics
from service.postprocess import probabilities, top_k
from service.repository import ModelRepository, ModelVersion

__all__ = ["Classification", "DataPlane", "FeatureMap"]

T = TypeVar("T")


@dataclass(frozen=True)
class Classification:
    filename: str | None
    indices: list[int]  # top-k class indices, most probable first
    probabilities: list[float]


@dataclass(frozen=True)
class FeatureMap:
    layer: Layer
    array: np.ndarray  # (C, H, W) float32


def _finite(model: ModelVersion, output: np.ndarray) -> np.ndarray:
    """``output``, unless a row holds NaN or infinities: scores no client may be served."""
    if np.isfinite(output).all():
        return output
    rows = np.flatnonzero(~np.isfinite(output.reshape(len(output), -1)).all(axis=1))
    raise ModelOutputError(
        f"model {model.runtime.name} version {model.version} gave NaN or infinite scores "
        f"for input(s) {rows.tolist()[:8]}",
        model=model.runtime.name,
        rows=rows.tolist()[:64],
    )


class _Elsewhere(Exception):
    """Raised on the batcher's thread: these images are too large to decode there."""

    def __init__(self, opened: list[Image.Image]) -> None:
        super().__init__(len(opened))
        self.opened = opened


class DataPlane:
    # With one decode thread, a request whose images hold at most this many pixels in all
    # (a 2048x2048 photo) is decoded on the batcher's thread right before its batch:
    # decoding in the pool at the same time as inference would only make them share the
    # core (and its caches) and add a hand-off. Larger ones go to the pool, so that one of
    # them cannot hold up everyone's inference.
    serial_max_pixels = 4_194_304
    # In the pool, a request of several images holding more pixels than this is spread
    # over the pool's threads; a smaller one is decoded by one job, in one hand-off.
    spread_pixels = 1_048_576

    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.executor = executor
        self.limits = DecodeLimits(settings.max_image_pixels, settings.max_request_pixels)
        self.budget = PixelBudget(settings.max_decoding_pixels)
        self._threads = max(1, getattr(executor, "_max_workers", 1))
        self._stage_children: dict[tuple[str, str], Histogram] = {}

    # -- models ------------------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The version of ``name`` a request should run on (the highest unless named);
        raises model_not_found or model_unavailable."""
        return self.repository.get(name, version)

    async def _current(
        self,
        model: ModelVersion,
        version: str | None,
        work: Callable[[ModelVersion], Awaitable[T]],
    ) -> tuple[ModelVersion, T]:
        """``work`` on ``model``; if that version was swapped out before the work queued,
        once more on the version of the same name serving now."""
        try:
            return model, await work(model)
        except ModelRetiredError:
            fresh = self.repository.get(model.runtime.name, version)
            if fresh is model:
                raise
        return fresh, await work(fresh)

    # -- decoding ----------------------------------------------------------------------

    def _observer(self, stage: str, model: str) -> Histogram:
        child = self._stage_children.get((stage, model))
        if child is None:
            child = self._stage_children[stage, model] = self.metrics.stages.labels(stage, model)
        return child

    def _empty_batch(self, model: ModelVersion, size: int) -> np.ndarray:
        spec = model.runtime.card.input
        return np.empty(spec.shape(size), dtype=spec.numpy_dtype)

    def _decode(
        self,
        model: ModelVersion,
        images: Images,
        opened: list[Image.Image | None],
        out: np.ndarray,
        start: int,
        token: CancelToken,
        *,
        wait: bool = True,
    ) -> None:
        """``decode_rows`` with this model's stage metrics; a bad image as its domain error."""
        decode = self._observer("decode", model.runtime.name)
        preprocess = self._observer("preprocess", model.runtime.name)

        def observe(decoded: float, preprocessed: float) -> None:
            decode.observe(decoded)
            preprocess.observe(preprocessed)

        try:
            decode_rows(
                opened,
                model.runtime.card.input,
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

    def _in_pool(self, model: ModelVersion, images: Images, token: CancelToken) -> object:
        """One pool job: every header, then every image when the request is small; a large
        request of several images comes back opened, to be spread over the pool."""
        opened: list[Image.Image | None] = list(self._open(images, token))
        if len(opened) > 1 and self._threads > 1 and pixels_of(opened) > self.spread_pixels:
            return opened
        batch = self._empty_batch(model, len(opened))
        self._decode(model, images, opened, batch, 0, token)
        return batch

    def _on_batcher(self, model: ModelVersion, images: Images, token: CancelToken) -> np.ndarray:
        """``prepare`` for the batcher's thread: small requests only (``_Elsewhere``)."""
        opened = self._open(images, token)
        if pixels_of(opened) > self.serial_max_pixels:
            raise _Elsewhere(opened)
        batch = self._empty_batch(model, len(opened))
        # Counted in the budget, never waiting for it: the batcher must not stall behind
        # large decodes in the pool, and what it decodes is bounded by serial_max_pixels.
        self._decode(model, images, list(opened), batch, 0, token, wait=False)
        return batch

    async def run_in_pool(self, call: Callable[[], T]) -> T:
        """``call()`` in the decode pool: CPU work on request data never runs on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def _spread(
        self,
        model: ModelVersion,
        images: Images,
        opened: Sequence[Image.Image | None],
        token: CancelToken,
    ) -> np.ndarray:
        """Decode opened images in one pool job per thread, rows straight into the batch."""
        batch = self._empty_batch(model, len(opened))
        chunk = -(-len(opened) // min(len(opened), self._threads))
        jobs = [
            self.run_in_pool(
                functools.partial(
                    self._decode, model, images, list(opened[i : i + chunk]), batch, i, token
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
        self, model: ModelVersion, images: Images, *, token: CancelToken | None = None
    ) -> np.ndarray:
        """Decode and preprocess ``images`` in the pool: (N, C, H, W) float32 in request
        order, or the domain error of the first image that fails."""
        token = token or CancelToken()
        try:
            result = await self.run_in_pool(functools.partial(self._in_pool, model, images, token))
            if isinstance(result, np.ndarray):
                return result
            return await self._spread(model, images, result, token)  # type: ignore[arg-type]
        finally:
            token.cancel()  # a request that gave up stops its workers between images

    # -- inference ---------------------------------------------------------------------

    async def infer(
        self, model: ModelVersion, batch: np.ndarray, *, ticket: Incoming | None = None
    ) -> np.ndarray:
        """The model's output for an (N, C, H, W) float32 batch, through the batcher
        (``ticket``: the batcher was told these images were coming)."""
        output = await model.batcher.submit(
            batch, timeout_s=self.settings.request_timeout_s, ticket=ticket
        )
        self.metrics.images.labels(model.runtime.name).inc(len(batch))
        return _finite(model, output)

    async def probabilities(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a batch of inputs, through the batcher."""
        return probabilities(await self.infer(model, batch), model.runtime.card.output_kind)

    async def cam_features(
        self, model: ModelVersion, image: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One input's class probabilities and the (C, h, w) feature maps its classifier
        head pools, from one forward pass (in the pool, as feature maps are)."""
        scores, maps = await self.run_in_pool(functools.partial(model.runtime.cam_features, image))
        return probabilities(scores[None], model.runtime.card.output_kind)[0], maps

    async def infer_tensor(
        self,
        model: ModelVersion,
        version: str | None,
        bind: Callable[[ModelVersion], np.ndarray],
    ) -> tuple[ModelVersion, np.ndarray]:
        """Inference on a tensor a protocol binds to the model (in the pool: converting and
        checking a request's tensor is CPU work), on the version serving now."""

        async def run(current: ModelVersion) -> np.ndarray:
            batch = await self.run_in_pool(functools.partial(bind, current))
            return await self.infer(current, batch)

        return await self._current(model, version, run)

    async def run_images(self, model: ModelVersion, images: Images) -> np.ndarray:
        """The model's outputs for encoded images, one row per image in request order."""
        token = CancelToken()
        timeout = self.settings.request_timeout_s
        try:
            with model.batcher.incoming(len(images)) as ticket:
                if self._threads == 1:
                    try:
                        output = await model.batcher.submit_unprepared(
                            len(images),
                            functools.partial(self._on_batcher, model, images, token),
                            timeout_s=timeout,
                            ticket=ticket,
                        )
                    except _Elsewhere as moved:
                        batch = await self._spread(model, images, moved.opened, token)
                    else:
                        self.metrics.images.labels(model.runtime.name).inc(len(images))
                        return _finite(model, output)
                else:
                    batch = await self.prepare(model, images, token=token)
                return await self.infer(model, batch, ticket=ticket)
        finally:
            token.cancel()

    async def classify(
        self, model: ModelVersion, images: Images, *, k: int, version: str | None = None
    ) -> tuple[ModelVersion, list[Classification]]:
        """Top-``k`` classes of each image, on ``model`` (or, if it was swapped out
        meanwhile, on the ``version`` of the same name serving now)."""
        classes = len(model.runtime.card.labels)
        if not 1 <= k <= classes:
            raise InvalidParameterError(
                f"top_k must be between 1 and {classes}, not {k}",
                parameter="top_k",
                minimum=1,
                maximum=classes,
            )
        served, output = await self._current(
            model, version, functools.partial(self.run_images, images=images)
        )
        scores = probabilities(output, served.runtime.card.output_kind)
        indices, values = (a.tolist() for a in top_k(scores, k))  # Python numbers
        names = [name for name, _ in images]
        return served, [Classification(n, indices[i], values[i]) for i, n in enumerate(names)]

    # -- feature maps ------------------------------------------------------------------

    def resolve_layers(self, model: ModelVersion, names: Sequence[str]) -> list[Layer]:
        """The named layers, each once, in the order first named; unknown_layer otherwise."""
        valid = [layer.name for layer in model.runtime.layers]
        if not names:
            raise UnknownLayerError("name at least one layer with ?layer=", valid_layers=valid)
        unknown = [n for n in names if model.runtime.layer(n) is None]
        if unknown:
            raise UnknownLayerError(
                f"unknown layer(s) {', '.join(map(repr, unknown))} for model "
                f"{model.runtime.name}; valid layers: {', '.join(valid)}",
                unknown=unknown,
                valid_layers=valid,
            )
        # Each layer once: a repeated ?layer= must not multiply the work and the response
        # (50 copies of a MobileNetV2 layer were 306 MiB of JSON).
        unique = dict.fromkeys(names)
        return [layer for n in unique if (layer := model.runtime.layer(n)) is not None]

    @staticmethod
    def activation_bytes(layers: Sequence[Layer]) -> int | None:
        """Bytes of float32 activations the layers give for one image (None when the graph
        leaves a dimension open)."""
        total = 0
        for layer in layers:
            dims = [d for d in layer.output_shape if d is not None]
            if len(dims) != len(layer.output_shape):
                return None
            total += 4 * math.prod(dims)
        return total

    async def feature_maps(
        self, model: ModelVersion, image: bytes, layers: list[Layer]
    ) -> list[FeatureMap]:
        """The activations of ``layers`` for one encoded image."""
        token = CancelToken()
        batch = await self.prepare(model, [(None, image)], token=token)
        timeout = self.settings.request_timeout_s
        try:
            arrays = await asyncio.wait_for(
                self.run_in_pool(functools.partial(model.runtime.feature_maps, batch[0], layers)),
                timeout,
            )
        except TimeoutError:
            raise DeadlineExceededError(
                f"the request did not finish within {timeout:g} s", timeout_s=timeout
            ) from None
        return [FeatureMap(layer, array) for layer, array in zip(layers, arrays, strict=True)]
