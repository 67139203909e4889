"""The data plane: classification, feature maps and raw tensor inference, with no HTTP inside.

Images are decoded and preprocessed in a thread pool (never on the event loop), then go
through the model version's batcher; feature maps use the runtime's augmented session in
the same pool. Both the native API and the Open Inference Protocol call into this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

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
from service.preprocessing import decode_image, to_tensor
from service.repository import ModelRepository, ModelVersion

__all__ = ["Classification", "DataPlane", "FeatureMap", "softmax", "top_k"]


@dataclass(frozen=True)
class Classification:
    filename: str | None
    indices: np.ndarray  # top-k class indices, most probable first
    probabilities: np.ndarray


@dataclass(frozen=True)
class FeatureMap:
    layer: Layer
    array: np.ndarray  # (C, H, W) float32


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, largest first."""
    part = np.argpartition(-probabilities, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(probabilities, part, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1), np.take_along_axis(values, order, -1)


class DataPlane:
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

    def _prepare(self, model: ModelVersion, data: bytes) -> np.ndarray:
        started = time.perf_counter()
        image = decode_image(data, max_pixels=self.settings.max_image_pixels)
        decoded = time.perf_counter()
        tensor = to_tensor(image, model.runtime.card.input)
        name = model.runtime.name
        self.metrics.stages.labels("decode", name).observe(decoded - started)
        self.metrics.stages.labels("preprocess", name).observe(time.perf_counter() - decoded)
        return tensor

    async def prepare(
        self, model: ModelVersion, images: Sequence[tuple[str | None, bytes]]
    ) -> np.ndarray:
        """Decode and preprocess images in the pool; (N, C, H, W) float32 in request order."""
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self.executor, self._prepare, model, data) for _, data in images
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for index, (result, (filename, _)) in enumerate(zip(results, images, strict=True)):
            if isinstance(result, ServiceError):
                result.detail.update(index=index, filename=filename)
                if len(images) > 1:
                    result.message = f"image {index} ({filename}): {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise InvalidImageError(
                    f"image {index} ({filename}) could not be read: {result}",
                    index=index,
                    filename=filename,
                ) from result
        return np.stack([r for r in results if isinstance(r, np.ndarray)])

    async def infer(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """The model's output for an (N, C, H, W) float32 batch, through the batcher."""
        output = await model.batcher.submit(batch, timeout_s=self.settings.request_timeout_s)
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
        batch = await self.prepare(model, images)
        output = await self.infer(model, batch)
        probabilities = (
            softmax(output.astype(np.float64))
            if model.runtime.card.output_kind == "logits"
            else output
        )
        indices, values = top_k(probabilities, k)
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
        return [layer for n in names if (layer := model.runtime.layer(n)) is not None]

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
