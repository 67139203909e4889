"""Client and AsyncClient: thin shells that drive the core's operations with real I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from cnn_client._core import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ClientCore,
    ExplainQuery,
    Operation,
    Sleep,
    Target,
    transport_error,
)
from cnn_client._images import ImageInput
from cnn_client._results import Classification, Explanation, FeatureMap, ModelInfo

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
Version = str | int | None


class Client:
    """A blocking client for one cnnserve server; use it as a context manager.

    ``timeout`` is in seconds per request (``None``: wait forever). A 503 is retried up
    to ``retries`` times, waiting what ``Retry-After`` says, else ``backoff * 2**attempt``
    seconds (at most 60), through ``sleep``. ``api_key`` goes out as a Bearer token.
    ``transport`` replaces the network, e.g. ``httpx.MockTransport`` in tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self._core = ClientCore(
            base_url, timeout=timeout, api_key=api_key, retries=retries, backoff=backoff
        )
        self._http = httpx.Client(transport=transport)
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    self._sleep(step.seconds)
                    step = operation.send(None)
                    continue
                try:
                    response = self._http.send(step)
                except httpx.HTTPError as exc:
                    raise transport_error(exc, step) from exc
                step = operation.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def live(self) -> bool:
        """Whether the server process answers (``GET /health/live``)."""
        return self._run(self._core.live())

    def ready(self) -> bool:
        """Whether every model is loaded and warmed; never retried."""
        return self._run(self._core.ready())

    def models(self) -> list[ModelInfo]:
        """Every model the server serves."""
        return self._run(self._core.models())

    def model(self, name: str, *, version: Version = None) -> ModelInfo:
        """One model; raises NotFoundError for an unknown name or version."""
        return self._run(self._core.model(name, version=version))

    def classify(
        self,
        image: ImageInput,
        *,
        model: str,
        top_k: int = 5,
        version: Version = None,
        calibrated: bool = True,
    ) -> Classification:
        """The ``top_k`` most probable classes of one image.

        ``image`` is a path, encoded bytes, a binary file object, a PIL image or a uint8
        numpy array (HxW grey or HxWxC); arrays and PIL images are sent as PNG. The
        probabilities are temperature-calibrated where the model has a temperature;
        ``calibrated=False`` asks for the raw softmax. ``result.ood`` says whether the
        image looks out of distribution, when the server tells.
        """
        operation = self._core.classify(
            image, model=model, top_k=top_k, version=version, calibrated=calibrated
        )
        return self._run(operation)

    def classify_many(
        self,
        images: Sequence[ImageInput],
        *,
        model: str,
        top_k: int = 5,
        version: Version = None,
        calibrated: bool = True,
    ) -> list[Classification]:
        """Classify many images, in order, in one request per server limit's worth.

        The client starts at 64 images per request; a ``too_many_images`` answer teaches it
        the server's limit and the rest is sent in smaller requests.
        """
        operation = self._core.classify_many(
            images, model=model, top_k=top_k, version=version, calibrated=calibrated
        )
        return self._run(operation)

    def feature_maps(
        self,
        image: ImageInput,
        *,
        model: str,
        layers: str | Sequence[str],
        version: Version = None,
    ) -> list[FeatureMap]:
        """The activations of the named layers for one image, in the order asked."""
        return self._run(
            self._core.feature_maps(image, model=model, layers=layers, version=version)
        )

    def feature_map_png(
        self, image: ImageInput, *, model: str, layer: str, version: Version = None
    ) -> bytes:
        """One layer's channels tiled into a grid, as PNG bytes rendered by the server."""
        return self._run(
            self._core.feature_map_png(image, model=model, layer=layer, version=version)
        )

    def explain(
        self,
        image: ImageInput,
        *,
        model: str,
        method: str = "occlusion",
        target: Target = None,
        window: int | None = None,
        stride: int | None = None,
        version: Version = None,
    ) -> Explanation:
        """Why the model chose a class for one image: a heatmap over its input.

        ``method`` is ``"occlusion"`` (every model) or ``"cam"`` (models whose head is
        global average pooling and one linear layer; ``ModelInfo.explanations`` lists each
        model's). ``target`` is a class index or label, by default the top class; a label
        made only of digits is read as an index. ``window`` and ``stride`` (occlusion only,
        in model-input pixels) default to the server's choice for the input size. A method
        the model cannot have raises InvalidInputError with code ``method_not_supported``.
        """
        query = ExplainQuery(method, target, window, stride, version)
        operation = self._core.explain(image, model=model, query=query)
        return self._run(operation)

    def explanation_png(
        self,
        image: ImageInput,
        *,
        model: str,
        method: str = "occlusion",
        target: Target = None,
        window: int | None = None,
        stride: int | None = None,
        version: Version = None,
    ) -> bytes:
        """The explanation as PNG bytes rendered by the server: the heatmap in colour over
        the model input. Arguments as for :meth:`explain`."""
        query = ExplainQuery(method, target, window, stride, version)
        operation = self._core.explanation_png(image, model=model, query=query)
        return self._run(operation)


class AsyncClient:
    """The asyncio twin of :class:`Client`: same arguments, same methods, awaited.

    ``sleep`` must be a coroutine function, ``asyncio.sleep`` by default, and
    ``transport`` an ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._core = ClientCore(
            base_url, timeout=timeout, api_key=api_key, retries=retries, backoff=backoff
        )
        self._http = httpx.AsyncClient(transport=transport)
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    await self._sleep(step.seconds)
                    step = operation.send(None)
                    continue
                try:
                    response = await self._http.send(step)
                except httpx.HTTPError as exc:
                    raise transport_error(exc, step) from exc
                step = operation.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def live(self) -> bool:
        """See :meth:`Client.live`."""
        return await self._run(self._core.live())

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        return await self._run(self._core.ready())

    async def models(self) -> list[ModelInfo]:
        """See :meth:`Client.models`."""
        return await self._run(self._core.models())

    async def model(self, name: str, *, version: Version = None) -> ModelInfo:
        """See :meth:`Client.model`."""
        return await self._run(self._core.model(name, version=version))

    async def classify(
        self,
        image: ImageInput,
        *,
        model: str,
        top_k: int = 5,
        version: Version = None,
        calibrated: bool = True,
    ) -> Classification:
        """See :meth:`Client.classify`."""
        operation = self._core.classify(
            image, model=model, top_k=top_k, version=version, calibrated=calibrated
        )
        return await self._run(operation)

    async def classify_many(
        self,
        images: Sequence[ImageInput],
        *,
        model: str,
        top_k: int = 5,
        version: Version = None,
        calibrated: bool = True,
    ) -> list[Classification]:
        """See :meth:`Client.classify_many`."""
        operation = self._core.classify_many(
            images, model=model, top_k=top_k, version=version, calibrated=calibrated
        )
        return await self._run(operation)

    async def feature_maps(
        self,
        image: ImageInput,
        *,
        model: str,
        layers: str | Sequence[str],
        version: Version = None,
    ) -> list[FeatureMap]:
        """See :meth:`Client.feature_maps`."""
        operation = self._core.feature_maps(image, model=model, layers=layers, version=version)
        return await self._run(operation)

    async def feature_map_png(
        self, image: ImageInput, *, model: str, layer: str, version: Version = None
    ) -> bytes:
        """See :meth:`Client.feature_map_png`."""
        operation = self._core.feature_map_png(image, model=model, layer=layer, version=version)
        return await self._run(operation)

    async def explain(
        self,
        image: ImageInput,
        *,
        model: str,
        method: str = "occlusion",
        target: Target = None,
        window: int | None = None,
        stride: int | None = None,
        version: Version = None,
    ) -> Explanation:
        """See :meth:`Client.explain`."""
        query = ExplainQuery(method, target, window, stride, version)
        operation = self._core.explain(image, model=model, query=query)
        return await self._run(operation)

    async def explanation_png(
        self,
        image: ImageInput,
        *,
        model: str,
        method: str = "occlusion",
        target: Target = None,
        window: int | None = None,
        stride: int | None = None,
        version: Version = None,
    ) -> bytes:
        """See :meth:`Client.explanation_png`."""
        query = ExplainQuery(method, target, window, stride, version)
        operation = self._core.explanation_png(image, model=model, query=query)
        return await self._run(operation)
