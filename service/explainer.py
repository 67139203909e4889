"""Explanations as a service: a request's image, method, target and parameters -> a heatmap.

No HTTP here. ``Explainer.explain`` checks the method and its parameters against the model
(400 ``invalid_parameter`` or ``method_not_supported``, before any work), answers a repeated
request from a cache bounded in bytes (``CNNSERVE_EXPLAIN_CACHE_BYTES``), and otherwise
decodes the image through the data plane, scores it once (which gives the default target,
the top class) and runs the method (``service.explain``), its forward passes going through
the model's batcher like any other request's, in chunks of what one batch call takes.

What one explanation can cost: at most ``service.explain.MAX_OCCLUDED`` forward passes (an
occlusion), memory for one chunk of copies at a time, and its request's deadline: the work
is cancelled between chunks when the deadline passes or the client leaves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import tracing
from service.dataplane import DataPlane
from service.errors import InvalidParameterError, MethodNotSupportedError
from service.explain import METHODS, Grid, Heatmap, Subject, copies
from service.head import Head
from service.metrics import Metrics
from service.repository import ModelVersion

__all__ = ["Explainer", "Explanation", "Target", "cam_grid", "supported_methods"]

_ENTRY_OVERHEAD = 512  # bytes a cached explanation takes besides its values (key, objects)


@dataclass(frozen=True)
class Target:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    model: str
    version: str
    method: str
    parameters: dict[str, int]
    target: Target
    heatmap: Heatmap
    seconds: float
    cached: bool = False
    input: np.ndarray | None = field(default=None, compare=False)  # None when cached


class _Cache:
    """Least recently used explanations, bounded in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[Any, ...], Explanation] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(entry: Explanation) -> int:
        return entry.heatmap.values.nbytes + _ENTRY_OVERHEAD

    def get(self, key: tuple[Any, ...]) -> Explanation | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: Explanation) -> None:
        size = self._size(entry)
        if size > self.capacity:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self._size(self._entries.pop(key))
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.capacity:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= self._size(dropped)


def cam_grid(model: ModelVersion) -> Grid | None:
    """Where the cells of the model's class activation maps lie: the receptive field of the
    feature maps its head pools (None: no such head, or a field the graph cannot tell)."""
    head = model.runtime.head
    if not isinstance(head, Head):
        return None
    layer = next((layer for layer in model.runtime.layers if layer.output == head.source), None)
    rf = layer.receptive_field if layer is not None else None
    return None if rf is None else Grid(rf.size, rf.jump, rf.start)


def supported_methods(model: ModelVersion) -> list[str]:
    """The explanation methods this model supports (ModelInfo lists them)."""
    head = model.runtime.head
    reason = head if isinstance(head, str) else None
    grid = cam_grid(model)
    return [name for name, m in METHODS.items() if m.unsupported(grid, reason) is None]


class Explainer:
    def __init__(self, dataplane: DataPlane, metrics: Metrics, *, cache_bytes: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self._cache = _Cache(cache_bytes)

    def _target(self, model: ModelVersion, target: str | None) -> int | None:
        """The target class from the request: an index or a label (None: the top class)."""
        if target is None or target == "":
            return None
        labels = model.runtime.card.labels
        if target.strip().lstrip("-").isdigit():
            index = int(target)
            if 0 <= index < len(labels):
                return index
        elif target in labels:
            return labels.index(target)
        raise InvalidParameterError(
            f"target must be a class index (0 to {len(labels) - 1}) or one of the model's "
            f"labels, not {target[:100]!r}",
            parameter="target",
        )

    def check(
        self, model: ModelVersion, method: str, target: str | None, query: Mapping[str, str | None]
    ) -> tuple[int | None, dict[str, int]]:
        """The request's target and parameters, or the 400 that says what is wrong (no work
        done yet)."""
        chosen = METHODS.get(method)
        if chosen is None:
            raise InvalidParameterError(
                f"unknown method {method[:50]!r}; choose one of: {', '.join(METHODS)}",
                parameter="method",
                methods=list(METHODS),
            )
        head = model.runtime.head
        reason = chosen.unsupported(cam_grid(model), head if isinstance(head, str) else None)
        if reason is not None:
            raise MethodNotSupportedError(
                f"model {model.runtime.name} cannot have {method} explanations: {reason}",
                method=method,
                supported=supported_methods(model),
            )
        return self._target(model, target), chosen.parameters(model.runtime.card.input, query)

    async def explain(
        self,
        model: ModelVersion,
        image: bytes,
        *,
        method: str,
        target: int | None,
        parameters: dict[str, int],
    ) -> Explanation:
        """Explain ``image`` for ``target`` (default: the top class) with ``method``."""
        name = model.runtime.name
        digest = hashlib.sha256(image).digest()
        key = (name, model.version, digest, method, target, tuple(sorted(parameters.items())))
        cached = self._cache.get(key)
        if cached is not None:
            self.metrics.explanations.labels(name, method, "hit").inc()
            return dataclasses.replace(cached, cached=True)
        started = time.perf_counter()
        tracing.annotate(model=name, version=model.version, method=method)
        subject = await self._subject(model, image, method, target)
        with tracing.span("explain", method=method, target=subject.target):
            heatmap = await METHODS[method].run(subject, parameters)
        seconds = time.perf_counter() - started
        label = model.runtime.card.labels[subject.target]
        result = Explanation(
            name,
            model.version,
            method,
            parameters,
            Target(subject.target, label, subject.probability),
            heatmap,
            seconds,
            input=subject.input,
        )
        self._cache.put(key, dataclasses.replace(result, input=None))
        self.metrics.explanations.labels(name, method, "miss").inc()
        self.metrics.explanation_seconds.labels(name, method).observe(seconds)
        self.metrics.occluded.labels(name).inc(copies(model.runtime.card.input, parameters))
        return result

    async def _subject(
        self, model: ModelVersion, image: bytes, method: str, target: int | None
    ) -> Subject:
        """The input, scored once: its probabilities give the default target (and, for cam,
        the same pass gives the feature maps)."""
        plane = self.dataplane
        input_ = (await plane.prepare(model, [(None, image)]))[0]
        maps: np.ndarray | None = None
        if METHODS[method].needs_cam:
            probabilities, maps = await plane.cam_features(model, input_)
        else:
            probabilities = (await plane.probabilities(model, input_[None]))[0]
        chosen = int(np.argmax(probabilities)) if target is None else target
        head = model.runtime.head

        async def cam() -> tuple[np.ndarray, np.ndarray]:
            assert isinstance(head, Head) and maps is not None
            return head.weights, maps

        async def scores(batch: np.ndarray) -> np.ndarray:
            return await plane.probabilities(model, batch)

        return Subject(
            input=input_,
            spec=model.runtime.card.input,
            target=chosen,
            probability=float(probabilities[chosen]),
            scores=scores,
            chunk=min(model.batcher.batch_limit, plane.settings.max_batch_size),
            cam=cam if maps is not None else None,
            cam_grid=cam_grid(model),
        )
