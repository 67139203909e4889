"""The data plane: classification, feature maps and raw tensor inference, with no HTTP inside.

Images are decoded and preprocessed into one (N, C, H, W) array: on the event loop when they
are small (a few hundred microseconds of work at most, less than handing them to a thread),
in the thread pool otherwise. They then go through the model version's batcher; feature maps
use the runtime's augmented session in the same pool. Both the native API and the Open
Inference Protocol call into this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from prometheus_client import Histogram

from service.batching import Incoming
from service.config import Settings
from service.errors import (
    DeadlineExceededError,
    InvalidImageError,
    InvalidParameterError,
    ServiceError,
    UnknownLayerError,
)
from service.graph import Layer
from service.metrics import Metrics
from service.preprocessing import load_image, open_image, to_tensor
from service.repository import ModelRepository, ModelVersion

__all__ = ["Classification", "DataPlane", "FeatureMap", "softmax", "top_k"]


@dataclass(frozen=True)
class Classification:
    filename: str | None
    indices: list[int]  # top-k class indices, most probable first
    probabilities: list[float]


@dataclass(frozen=True)
class FeatureMap:
    layer: Layer
    array: np.ndarray  # (C, H, W) float32


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (one copy, then in place: this runs once per request)."""
    z = np.array(logits, dtype=np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, largest first (ties: the
    lower index first)."""
    # One stable sort: partitioning first is faster for 1000 classes, but it picks among
    # values tied at the k-th place in no particular order (microseconds against the
    # milliseconds of a model that size).
    indices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    return indices, probabilities[rows, indices]


class _ImageFailure(Exception):
    """An image of a request could not be read: which one, and why."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def _image_error(
    failure: _ImageFailure, images: Sequence[tuple[str | None, bytes]]
) -> ServiceError:
    """The domain error for a failed image, naming its position and filename."""
    index, error = failure.index, failure.error
    filename = images[index][0]
    if isinstance(error, ServiceError):
        error.detail.update(index=index, filename=filename)
        if len(images) > 1:
            error.message = f"image {index} ({filename}): {error.message}"
        return error
    wrapped = InvalidImageError(
        f"image {index} ({filename}) could not be read: {error}", index=index, filename=filename
    )
    wrapped.__cause__ = error
    return wrapped


class DataPlane:
    # Requests whose images total at most this many pixels are decoded on the event loop
    # (a few hundred microseconds at most); larger ones in the pool, or with one core on the
    # batcher's thread when each image is at most serial_max_pixels (a 2048x2048 photo).
    inline_pixels = 16_384
    serial_max_pixels = 4_194_304

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
        self._threads = max(1, getattr(executor, "_max_workers", 1))
        self._stage_children: dict[tuple[str, str], Histogram] = {}

    def _observer(self, stage: str, model: str) -> Histogram:
        child = self._stage_children.get((stage, model))
        if child is None:
            child = self._stage_children[stage, model] = self.metrics.stages.labels(stage, model)
        return child

    def _prepare_rows(
        self,
        model: ModelVersion,
        images: Sequence[Image.Image],
        out: np.ndarray,
        start: int,
    ) -> None:
        """Decode and preprocess opened ``images`` into ``out[start:]``; a failure raises
        ``_ImageFailure`` with the index of the image in the request."""
        spec = model.runtime.card.input
        decode = self._observer("decode", model.runtime.name)
        preprocess = self._observer("preprocess", model.runtime.name)
        for index, image in enumerate(images, start):
            try:
                started = time.perf_counter()
                pixels = load_image(image)
                decoded = time.perf_counter()
                to_tensor(pixels, spec, out=out[index])
            except Exception as exc:
                raise _ImageFailure(index, exc) from exc
            decode.observe(decoded - started)
            preprocess.observe(time.perf_counter() - decoded)

    def _open(
        self, images: Sequence[tuple[str | None, bytes]]
    ) -> tuple[list[Image.Image], _ImageFailure | None]:
        """Read every header (cheap); stop at the first that fails."""
        opened: list[Image.Image] = []
        for index, (_, data) in enumerate(images):
            try:
                opened.append(open_image(data, max_pixels=self.settings.max_image_pixels))
            except Exception as exc:
                return opened, _ImageFailure(index, exc)
        return opened, None

    def _batch(
        self, model: ModelVersion, opened: list[Image.Image]
    ) -> tuple[np.ndarray, _ImageFailure | None]:
        spec = model.runtime.card.input
        batch = np.empty((len(opened), spec.channels, *spec.size), dtype=np.float32)
        try:
            self._prepare_rows(model, opened, batch, 0)
        except _ImageFailure as failure:
            return batch, failure
        return batch, None

    def _serial(self, opened: list[Image.Image]) -> bool:
        """Whether to decode on the batcher's thread, right before inference: with one core
        per process, decoding in the pool at the same time as inference only makes them
        share the core (and its caches) and adds a hand-off. Huge images still go to the
        pool, so that one of them cannot hold up everyone's inference."""
        return self._threads == 1 and all(
            i.width * i.height <= self.serial_max_pixels for i in opened
        )

    async def prepare(
        self, model: ModelVersion, images: Sequence[tuple[str | None, bytes]]
    ) -> np.ndarray:
        """Decode and preprocess images; (N, C, H, W) float32 in request order.

        Headers are read on the event loop (cheap, and they say what decoding will cost).
        Small images are then decoded right there: for a 28x28 PNG a hand-off to a thread
        and back costs more than the work. Anything bigger goes to the pool, in one job per
        pool thread rather than one per image. Rows are written straight into the batch.
        """
        opened, failure = self._open(images)
        return await self._decode(model, images, opened, failure)

    async def _decode(
        self,
        model: ModelVersion,
        images: Sequence[tuple[str | None, bytes]],
        opened: list[Image.Image],
        failure: _ImageFailure | None,
    ) -> np.ndarray:
        if sum(i.width * i.height for i in opened) <= self.inline_pixels:
            batch, earlier = self._batch(model, opened)
        else:
            spec = model.runtime.card.input
            batch = np.empty((len(opened), spec.channels, *spec.size), dtype=np.float32)
            loop = asyncio.get_running_loop()
            chunk = -(-len(opened) // min(len(opened), self._threads))
            jobs = [
                loop.run_in_executor(
                    self.executor, self._prepare_rows, model, opened[i : i + chunk], batch, i
                )
                for i in range(0, len(opened), chunk)
            ]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            earlier = next((e for e in errors if isinstance(e, _ImageFailure)), None)
            if errors and earlier is not errors[0]:
                raise errors[0]  # chunks are in order: the first is the earliest image
        failure = earlier or failure  # an image before the one whose header failed
        if failure is not None:
            raise _image_error(failure, images)
        return batch

    def _prepared_on_batcher(
        self,
        model: ModelVersion,
        images: Sequence[tuple[str | None, bytes]],
        opened: list[Image.Image],
    ) -> Callable[[], np.ndarray]:
        def prepare() -> np.ndarray:
            batch, failure = self._batch(model, opened)
            if failure is not None:
                raise _image_error(failure, images)
            return batch

        return prepare

    async def infer(
        self, model: ModelVersion, batch: np.ndarray, *, ticket: Incoming | None = None
    ) -> np.ndarray:
        """The model's output for an (N, C, H, W) float32 batch, through the batcher
        (``ticket``: the batcher was told these images were coming)."""
        output = await model.batcher.submit(
            batch, timeout_s=self.settings.request_timeout_s, ticket=ticket
        )
        self.metrics.images.labels(model.runtime.name).inc(len(batch))
        return output

    async def classify(
        self, model: ModelVersion, images: Sequence[tuple[str | None, bytes]], *, k: int
    ) -> list[Classification]:
        classes = len(model.runtime.card.labels)
        if not 1 <= k <= classes:
            raise InvalidParameterError(
                f"top_k must be between 1 and {classes}, not {k}",
                parameter="top_k",
                minimum=1,
                maximum=classes,
            )
        with model.batcher.incoming(len(images)) as ticket:
            opened, failure = self._open(images)
            pixels = sum(i.width * i.height for i in opened)
            if failure is None and pixels > self.inline_pixels and self._serial(opened):
                output = await model.batcher.submit_unprepared(
                    len(opened),
                    self._prepared_on_batcher(model, images, opened),
                    timeout_s=self.settings.request_timeout_s,
                    ticket=ticket,
                )
                self.metrics.images.labels(model.runtime.name).inc(len(opened))
            else:
                batch = await self._decode(model, images, opened, failure)
                output = await self.infer(model, batch, ticket=ticket)
        probabilities = softmax(output) if model.runtime.card.output_kind == "logits" else output
        indices, values = (a.tolist() for a in top_k(probabilities, k))  # Python numbers
        return [Classification(name, indices[i], values[i]) for i, (name, _) in enumerate(images)]

    def resolve_layers(self, model: ModelVersion, names: Sequence[str]) -> list[Layer]:
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
        # Each layer once, in the order first named: a repeated ?layer= must not multiply
        # the work and the response (50 copies of a MobileNetV2 layer were 306 MiB of JSON).
        unique = dict.fromkeys(names)
        return [layer for n in unique if (layer := model.runtime.layer(n)) is not None]

    async def feature_maps(
        self, model: ModelVersion, image: bytes, layers: list[Layer]
    ) -> list[FeatureMap]:
        batch = await self.prepare(model, [(None, image)])
        loop = asyncio.get_running_loop()
        timeout = self.settings.request_timeout_s
        try:
            arrays = await asyncio.wait_for(
                loop.run_in_executor(self.executor, model.runtime.feature_maps, batch[0], layers),
                timeout,
            )
        except TimeoutError:
            raise DeadlineExceededError(
                f"the request did not finish within {timeout:g} s", timeout_s=timeout
            ) from None
        return [FeatureMap(layer, array) for layer, array in zip(layers, arrays, strict=True)]
