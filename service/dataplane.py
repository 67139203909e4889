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

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypedDict, TypeVar

import numpy as np

from service import tracing
from service.batching import Incoming, Outputs
from service.config import Settings
from service.decoder import Decoder, Elsewhere
from service.decoding import (
    CancelToken,
    Images,
)
from service.errors import (
    InvalidParameterError,
    ModelOutputError,
    ModelRetiredError,
    UnknownLayerError,
)
from service.graph import Layer
from service.metrics import Metrics
from service.postprocess import top_k
from service.repository import ModelRepository, ModelVersion
from service.trust import Verdict

__all__ = ["Classification", "DataPlane", "FeatureMap"]

T = TypeVar("T")


class Prediction(TypedDict):
    index: int
    label: str
    probability: float


class Classification(TypedDict):
    """One image's result, in the native API's shape (``ClassifyResponse.results``)."""

    filename: str | None
    predictions: list[Prediction]  # top-k classes, most probable first
    ood: Verdict  # how unlike the training data: score, threshold, flagged, method


@dataclass(frozen=True)
class FeatureMap:
    layer: Layer
    array: np.ndarray  # (C, H, W) float32


_SUMMED_IN_PYTHON = 64  # scores; measured: above ~100, numpy's check is the faster


def _finite(model: ModelVersion, outputs: Outputs) -> Outputs:
    """``outputs``, unless a row of scores holds NaN or infinities: no client may get them."""
    scores = outputs[0]
    # A sum is finite when every term is (NaN and infinities carry through it): for a few
    # values (a request of LeNet-5's 10 classes) one pass in Python costs a quarter of
    # numpy's two calls, for more numpy is the faster. A sum that overflowed is settled by
    # numpy.
    small = scores.size <= _SUMMED_IN_PYTHON
    if (small and math.isfinite(sum(scores.ravel().tolist()))) or np.isfinite(scores).all():
        return outputs
    rows = np.flatnonzero(~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1))
    raise ModelOutputError(
        f"model {model.runtime.name} version {model.version} gave NaN or infinite scores "
        f"for input(s) {rows.tolist()[:8]}",
        model=model.runtime.name,
        rows=rows.tolist()[:64],
    )


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
        self.decoder = Decoder(settings, executor, metrics)

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

    async def run_in_pool(self, call: Callable[[], T]) -> T:
        """``call()`` in the decode pool: CPU work on request data never runs on the event loop."""
        return await self.decoder.run_in_pool(call)

    async def prepare(
        self, model: ModelVersion, images: Images, *, token: CancelToken | None = None
    ) -> np.ndarray:
        """Decode and preprocess ``images`` in the pool: a batch of the model's input in
        request order, or the domain error of the first image that fails."""
        spec, name = model.runtime.card.input, model.runtime.name
        return await self.decoder.prepare(spec, name, images, token=token)

    # -- inference ---------------------------------------------------------------------

    async def infer(
        self, model: ModelVersion, batch: np.ndarray, *, ticket: Incoming | None = None
    ) -> np.ndarray:
        """The model's scores for a batch of its input, through the batcher (``ticket``:
        the batcher was told these images were coming); no trust summary is computed for
        them."""
        return (await self._outputs(model, batch, ticket=ticket, full=False))[0]

    async def _outputs(
        self,
        model: ModelVersion,
        batch: np.ndarray,
        *,
        ticket: Incoming | None = None,
        full: bool = True,
    ) -> Outputs:
        outputs = await model.batcher.submit(batch, ticket=ticket, full=full)
        self.metrics.child(self.metrics.images, model.runtime.name).inc(len(batch))
        return _finite(model, outputs)

    async def probabilities(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a batch of inputs, through the batcher,
        calibrated as classify's are."""
        return model.runtime.trust.probabilities(await self.infer(model, batch))

    async def cam_features(
        self, model: ModelVersion, image: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One input's class probabilities and the (C, h, w) feature maps its classifier
        head pools, from one forward pass (in the pool, as feature maps are)."""
        scores, maps = await self.run_in_pool(functools.partial(model.runtime.cam_features, image))
        return model.runtime.trust.probabilities(scores[None])[0], maps

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

    async def run_images(self, model: ModelVersion, images: Images) -> Outputs:
        """The model's outputs for encoded images (its scores, then the layer outputs its
        trust statistics read), one row per image in request order."""
        token = CancelToken()
        decoder, spec, name = self.decoder, model.runtime.card.input, model.runtime.name
        try:
            if decoder.threads == 1:
                try:  # decoded on the batcher's thread: queued at once, nothing to announce
                    output = await model.batcher.submit_unprepared(
                        len(images),
                        functools.partial(decoder.on_batcher, spec, name, images, token),
                    )
                except Elsewhere as moved:
                    with model.batcher.incoming(len(images)) as ticket:
                        batch = await decoder.spread(spec, name, images, moved.opened, token)
                        return await self._outputs(model, batch, ticket=ticket)
                self.metrics.child(self.metrics.images, name).inc(len(images))
                return _finite(model, output)
            with model.batcher.incoming(len(images)) as ticket:
                batch = await self.prepare(model, images, token=token)
                return await self._outputs(model, batch, ticket=ticket)
        finally:
            token.cancel()

    async def classify(
        self,
        model: ModelVersion,
        images: Images,
        *,
        k: int,
        version: str | None = None,
        calibrated: bool = True,
    ) -> tuple[ModelVersion, list[Classification]]:
        """Top-``k`` classes of each image, on ``model`` (or, if it was swapped out
        meanwhile, on the ``version`` of the same name serving now), with calibrated
        probabilities (raw softmax if not ``calibrated``) and each image's out-of-
        distribution verdict, from the same forward pass: the native API's ``results``,
        one per image in request order."""
        classes = len(model.runtime.card.labels)
        if not 1 <= k <= classes:
            raise InvalidParameterError(
                f"top_k must be between 1 and {classes}, not {k}",
                parameter="top_k",
                minimum=1,
                maximum=classes,
            )
        served, (scores, order, ranked, ood_score, fired) = await self._current(
            model, version, functools.partial(self.run_images, images=images)
        )
        runtime = served.runtime
        tracing.annotate(model=runtime.name, version=served.version, images=len(images))
        trust = runtime.trust
        with tracing.span("postprocess"):
            verdicts = trust.verdicts(ood_score, fired)
            if calibrated:  # ranked once per batch on the batcher's thread
                indices, values = order[:, :k].tolist(), ranked[:, :k].tolist()
            else:
                chances = trust.probabilities(scores, calibrated=False)
                indices, values = (a.tolist() for a in top_k(chances, k))  # Python numbers
        self.metrics.observe_ood(runtime.name, verdicts)
        labels = runtime.card.labels
        return served, [
            {
                "filename": filename,
                "predictions": [
                    {"index": i, "label": labels[i], "probability": p}
                    for i, p in zip(indices[row], values[row], strict=True)
                ],
                "ood": verdicts[row],
            }
            for row, (filename, _) in enumerate(images)
        ]

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
        tracing.annotate(model=model.runtime.name, version=model.version, images=1)
        batch = await self.prepare(model, [(None, image)], token=token)
        with tracing.span("feature maps", layers=len(layers)):  # the request's deadline cuts it
            arrays = await self.run_in_pool(
                functools.partial(model.runtime.feature_maps, batch[0], layers)
            )
        return [FeatureMap(layer, array) for layer, array in zip(layers, arrays, strict=True)]
