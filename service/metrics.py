"""Prometheus metrics, in a registry of the app's own (so several apps can live in one test).

Request, stage and batch figures are recorded as they happen; model and queue state is read
from the repository at scrape time, so it can never go stale.

With several worker processes (``CNNSERVE_WORKERS``; ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is imported, which ``service.server`` does) every process writes its
figures to files in that folder and ``registry`` sums them all: a scrape, whichever worker
answers it, sees the whole server. The in-flight gauge is summed over live processes only
(the files of a worker that died are dropped at the next scrape). Model state comes from the
answering worker (every worker loads the same folder); the queue depth, which differs per
worker, is sampled once a second into a gauge summed over live workers.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from service.batching import BatchObserver
from service.repository import ModelRepository

__all__ = ["Metrics", "multiprocess_mode", "queue_depths"]

# Fitted scores are scaled so that the validation median is 0 and the threshold 1; raw
# energy scores (models without statistics) are negative, tens for 1000 classes.
_OOD_BUCKETS = (-50.0, -20.0, -10.0, -5.0, -2.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
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


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes to PROMETHEUS_MULTIPROC_DIR (chosen at its import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class _AllWorkers(Collector):
    """Every worker's figures, summed from the multiprocess folder; the live-summed gauges
    of workers that have exited are forgotten first (uvicorn restarts a worker that dies)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._inner = MultiProcessCollector(None, str(folder))

    def collect(self) -> Iterator[Metric]:
        for path in self._folder.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), str(self._folder))
        yield from self._inner.collect()


class _RepositoryCollector(Collector):
    def __init__(self, repository: ModelRepository, *, queue_depth: bool = True) -> None:
        self._repository = repository
        self._queue_depth = queue_depth

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
        yield from (models, info, depth) if self._queue_depth else (models, info)


def queue_depths(repository: ModelRepository) -> dict[str, int]:
    """Images waiting per model, all versions together."""
    return {
        entry.name: sum(version.batcher.depth for version in entry.versions.values())
        for entry in repository.entries()
    }


def _sample_queue_depths(
    repository: weakref.ref[ModelRepository], gauge: Gauge, stop: threading.Event
) -> None:
    while not stop.wait(1.0) and (watched := repository()) is not None:
        for name, depth in queue_depths(watched).items():
            gauge.labels(name).set(depth)


class Metrics:
    """The service's metrics; ``registry`` is what /metrics exposes."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # The metric objects register here, so that names stay unique per app. In
        # multiprocess mode their values live in files, and ``registry`` reads those instead.
        r = CollectorRegistry(auto_describe=True)
        self.registry = r
        self._stop = threading.Event()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        if self.multiprocess:
            self.registry = CollectorRegistry()
            self.registry.register(_AllWorkers(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
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
        self.explanations = Counter(
            "cnnserve_explanations",
            "Explanations by model, method and whether the cache answered",
            ["model", "method", "cache"],
            registry=r,
        )
        self.explanation_seconds = Histogram(
            "cnnserve_explanation_duration_seconds",
            "Time to explain one image (cache misses)",
            ["model", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ood_scores = Histogram(
            "cnnserve_ood_score",
            "Out-of-distribution scores of classified images (above 1: past the threshold)",
            ["model"],
            buckets=_OOD_BUCKETS,
            registry=r,
        )
        self.ood_flagged = Counter(
            "cnnserve_ood_flagged_images",
            "Classified images flagged as unlike the model's training data",
            ["model"],
            registry=r,
        )
        self.occluded = Counter(
            "cnnserve_occluded_images",
            "Occluded copies run for explanations",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size",
            "Images per ONNX Runtime call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.inflight = Gauge(
            "cnnserve_inflight_requests",
            "Requests being served now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "cnnserve_queue_depth",
            "Images waiting in the batcher",
            ["model"],
            registry=r if self.multiprocess else None,  # else read at scrape time
            multiprocess_mode="livesum",
        )

    def watch(self, repository: ModelRepository) -> None:
        """Report ``repository``'s model state (and queue depth) from now on."""
        self.registry.register(_RepositoryCollector(repository, queue_depth=not self.multiprocess))
        if self.multiprocess:
            threading.Thread(
                target=_sample_queue_depths,
                args=(weakref.ref(repository), self.queue_depth, self._stop),
                name="metrics-queue-depth",
                daemon=True,
            ).start()

    def close(self) -> None:
        """Stop the queue-depth sampler (multiprocess mode)."""
        self._stop.set()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (prometheus_client's
        lookup validates and locks on every call). The sets are bounded: route templates,
        models in the repository, statuses, stages. Safe from any thread: two threads
        looking up a new set at once both get prometheus_client's one child."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_ood(self, model: str, verdicts: list[dict[str, Any]]) -> None:
        """Record a request's out-of-distribution verdicts: a drift in what clients send
        shows in the scores' distribution and the flagged count."""
        scores = self.child(self.ood_scores, model)
        flagged = 0
        for verdict in verdicts:
            scores.observe(verdict["score"])
            flagged += verdict["flagged"]
        if flagged:
            self.child(self.ood_flagged, model).inc(flagged)

    def batch_observer(self, model: str) -> BatchObserver:
        size = self.batch_size.labels(model)
        inference = self.stages.labels("inference", model)

        def observe(images: int, seconds: float) -> None:
            size.observe(images)
            inference.observe(seconds)

        return observe
