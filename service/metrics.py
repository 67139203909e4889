"""Prometheus metrics, in a registry of the app's own (so several apps can live in one test).

Request, stage and batch figures are recorded as they happen; model and queue state is read
from the repository at scrape time, so it can never go stale.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.batching import BatchObserver
from service.repository import ModelRepository

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _RepositoryCollector(Collector):
    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def collect(self) -> Iterator[GaugeMetricFamily]:
        models = GaugeMetricFamily(
            "cnnserve_models",
            "Models by state and execution provider",
            labels=["state", "provider"],
        )
        info = GaugeMetricFamily(
            "cnnserve_model_info",
            "One per loaded model version: where it runs and why",
            labels=["model", "version", "provider", "fallback_reason"],
        )
        depth = GaugeMetricFamily(
            "cnnserve_queue_depth", "Images waiting in the batcher", labels=["model"]
        )
        counts: dict[tuple[str, str], int] = {}
        for entry in self._repository.entries():
            provider = "none"
            queued = 0
            for version in entry.versions.values():
                placement = version.runtime.placement
                provider = placement.device
                info.add_metric(
                    [
                        entry.name,
                        version.version,
                        placement.device,
                        placement.fallback_reason or "",
                    ],
                    1,
                )
                queued += version.batcher.depth
            key = (entry.state.value, provider)
            counts[key] = counts.get(key, 0) + 1
            depth.add_metric([entry.name], queued)
        for (state, provider), n in sorted(counts.items()):
            models.add_metric([state, provider], n)
        yield from (models, info, depth)


class Metrics:
    """The service's metrics; ``registry`` is what /metrics exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cnnserve_requests",
            "Requests by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cnnserve_request_duration_seconds",
            "Request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stages = Histogram(
            "cnnserve_stage_duration_seconds",
            "Time per stage: decode, preprocess, inference",
            ["stage", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("cnnserve_images", "Images classified", ["model"], registry=r)
        self.batch_size = Histogram(
            "cnnserve_batch_size",
            "Images per ONNX Runtime call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.inflight = Gauge("cnnserve_inflight_requests", "Requests being served now", registry=r)

    def watch(self, repository: ModelRepository) -> None:
        self.registry.register(_RepositoryCollector(repository))

    def batch_observer(self, model: str) -> BatchObserver:
        size = self.batch_size.labels(model)
        inference = self.stages.labels("inference", model)

        def observe(images: int, seconds: float) -> None:
            size.observe(images)
            inference.observe(seconds)

        return observe
