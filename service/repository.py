"""The model repository: ``<model_dir>/<name>/<version>/model.onnx`` plus ``<name>/model.json``.

Every version folder is loaded and warmed; the highest version serves unless a request names
another. A model that cannot load is kept as ``unavailable`` with its reason, and the rest
serve. ``load`` and ``unload`` swap models while serving: requests already holding a
version finish on it, new ones see the new state.

Swaps cost memory, so they are bounded: one load or unload per model at a time (another
is a ``ConflictError``, 409, at once: the caller learns that its change is already under
way rather than queueing a copy of it), and one load in the process at a time, which starts
only once every swapped-out version has been released; so at most one extra copy of a
model is ever alive. A swapped-out version is released as soon as no request holds it (a
weak reference says when; at most ``release_timeout_s``, the longest a request may run):
its batcher closes, its session is freed, and the C heap is trimmed (``malloc_trim``), since
glibc keeps the freed pages of ONNX Runtime's threads otherwise (40 reloads of MobileNetV2
kept 2.4 GB).
"""

from __future__ import annotations

import enum
import functools
import gc
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.batching import Batcher, BatchObserver
from service.errors import ConflictError, ModelNotFoundError, ModelUnavailableError
from service.memory import trim_heap
from service.model_card import ModelCard, load_card
from service.runtime import ModelLoadError, ModelRuntime, SessionConfig

__all__ = [
    "BatchingConfig",
    "ModelEntry",
    "ModelRepository",
    "ModelState",
    "ModelVersion",
    "valid_model_name",
]

log = logging.getLogger(__name__)
_RELEASE_POLL_S = 0.02
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_model_name(name: str) -> bool:
    """Letters, digits, '.', '_' and '-', starting with a letter or digit: safe as a folder."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    queue_capacity: int = 512


@dataclass
class ModelVersion:
    """A version ready to serve: its runtime and its batcher."""

    version: str
    runtime: ModelRuntime
    batcher: Batcher


@dataclass
class ModelEntry:
    name: str
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    card: ModelCard | None = None
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    failed_versions: dict[str, str] = field(default_factory=dict)
    load_seconds: float | None = None

    @property
    def version_names(self) -> list[str]:
        return sorted({*self.versions, *self.failed_versions}, key=int)

    @functools.cached_property
    def default(self) -> str | None:
        """The version a request that names none gets: the card's ``default_version`` when
        it is one of the model's versions, else the highest. (Read once the entry is built:
        an entry is not changed once the repository serves it; a reload builds a new one.)"""
        names = self.version_names
        if self.card is not None:
            return self.card.served_default(names)
        return names[-1] if names else None

    def ready(self, version: str | None = None) -> bool:
        """Whether requests for ``version`` (the default when None) are served now: the one
        rule for a model's readiness, wherever it is reported."""
        if self.state is ModelState.LOADING:
            return False
        if version is None:
            return self.state is ModelState.READY
        return version in self.versions

    def get(self, version: str | None) -> ModelVersion:
        """The named version, or the highest; raises a domain error when it cannot serve."""
        if self.state is ModelState.LOADING:
            raise ModelUnavailableError(f"model {self.name} is still loading", model=self.name)
        wanted = version or self.default
        if wanted in self.versions:
            return self.versions[wanted]
        if wanted in self.failed_versions or (version is None and self.reason):
            reason = self.failed_versions.get(wanted or "", self.reason)
            raise ModelUnavailableError(
                f"model {self.name} is unavailable: {reason}", model=self.name, reason=reason
            )
        raise ModelNotFoundError(
            f"model {self.name} has no version {version!r}",
            model=self.name,
            versions=self.version_names,
        )


def _versions(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


@functools.cache
def _report_cpu(reason: str, gpu_present: bool) -> None:
    """Say once per process why ``auto`` runs models on the CPU: expected where no GPU exists
    (info), a problem where one does (warning). /health/ready and the metrics say it per
    model."""
    if gpu_present:
        log.warning("a GPU is present, but models run on CPU: %s", reason)
    else:
        log.info("no GPU on this machine: models run on CPU (%s)", reason)


class ModelRepository:
    """Loads, serves and swaps the models of one folder. Thread-safe."""

    def __init__(
        self,
        model_dir: Path,
        *,
        session: SessionConfig,
        batching: BatchingConfig,
        observer: Callable[[str], BatchObserver] | None = None,
        release_timeout_s: float = 60.0,
    ) -> None:
        self.model_dir = model_dir
        self._session = session
        self._batching = batching
        self._observer = observer
        self._release_timeout_s = release_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._busy: set[str] = set()  # models with a load or unload running
        self._load_lock = threading.Lock()  # one load in the process at a time
        self._releasing = 0  # swapped-out versions not yet released
        self._released = threading.Condition(self._lock)

    def names_on_disk(self) -> list[str]:
        if not self.model_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def known(self, name: str) -> bool:
        """Whether ``name`` is in the repository (one dict lookup: atomic, no lock)."""
        return name in self._entries

    def names(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [self._entries[name] for name in sorted(self._entries)]

    def entry(self, name: str) -> ModelEntry:
        found = self._entries.get(name)  # one dict lookup: atomic, no lock
        if found is None:
            raise ModelNotFoundError(
                f"no model named {name!r}", model=name, available=sorted(self._entries)
            )
        return found

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        return self.entry(name).get(version)

    def load_all(self) -> None:
        """Load every model on disk (called once, at start-up, off the event loop)."""
        with self._lock:
            for name in self.names_on_disk():
                self._entries.setdefault(name, ModelEntry(name))
        for name in self.names_on_disk():
            self.load(name)

    def _build(self, name: str) -> ModelEntry:
        entry = ModelEntry(name)
        started = time.perf_counter()
        root = self.model_dir / name
        try:
            if not valid_model_name(name):
                raise ModelLoadError(f"{name!r} is not a valid model name")
            if not root.is_dir():
                raise ModelLoadError(f"{root} does not exist")
            entry.card = load_card(root / "model.json")
            folders = _versions(root)
            if not folders:
                raise ModelLoadError(f"{root} has no version folder with a model.onnx")
        except (ModelLoadError, ValueError) as exc:
            entry.state, entry.reason = ModelState.UNAVAILABLE, str(exc)
            return entry
        for folder in folders:
            try:
                runtime = ModelRuntime(
                    name, folder.name, folder / "model.onnx", entry.card, self._session
                )
                runtime.warm_up()
            except (ModelLoadError, Exception) as exc:  # a broken version must not stop the rest
                entry.failed_versions[folder.name] = str(exc)
                log.error("model %s version %s unavailable: %s", name, folder.name, exc)
                continue
            if runtime.placement.fallback_reason:
                _report_cpu(runtime.placement.fallback_reason, runtime.placement.gpu_present)
            entry.versions[folder.name] = ModelVersion(
                folder.name, runtime, self._batcher(runtime, f"{name}/{folder.name}")
            )
        latest = entry.default
        if latest in entry.versions:
            entry.state = ModelState.READY
        else:
            entry.state = ModelState.UNAVAILABLE
            entry.reason = entry.failed_versions.get(latest or "", "no loadable version")
        entry.load_seconds = round(time.perf_counter() - started, 3)
        return entry

    def _batcher(self, runtime: ModelRuntime, label: str) -> Batcher:
        cfg = self._batching
        observe = self._observer(runtime.name) if self._observer else None
        return Batcher(
            runtime.infer,
            name=label,
            max_batch_size=cfg.max_batch_size,
            max_queue_delay_s=cfg.max_queue_delay_s,
            capacity=cfg.queue_capacity,
            observe=observe,
        )

    def load(self, name: str, *, keep_serving: bool = False) -> ModelEntry:
        """(Re)load ``name`` from disk and swap it in; the old versions are released once
        the requests holding them are done. ``ConflictError`` while another load or unload
        of ``name`` runs; a load of another model waits for the one running.

        With ``keep_serving``, a reload that cannot serve is dropped and the serving entry
        stays (Triton's rule for explicit loads); the failed entry is returned all the same.
        """
        self._claim(name)
        try:
            with self._load_lock:
                with self._released:  # at most one extra copy: the last swap's is gone
                    self._released.wait_for(lambda: self._releasing == 0)
                entry = self._build(name)
                return self._swap_in(name, entry, keep_serving=keep_serving)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _claim(self, name: str) -> None:
        with self._lock:
            if name in self._busy:
                current = self._entries.get(name)
                seconds = current.load_seconds if current and current.load_seconds else 1.0
                raise ConflictError(
                    f"model {name!r} is being loaded or unloaded already; retry once that is done",
                    retry_after_s=max(1, math.ceil(seconds)),
                    model=name,
                )
            self._busy.add(name)

    def _swap_in(self, name: str, entry: ModelEntry, *, keep_serving: bool) -> ModelEntry:
        with self._lock:
            old = self._entries.get(name)
            failed_reload = (
                keep_serving
                and old is not None
                and old.state is ModelState.READY
                and entry.state is not ModelState.READY
            )
            if not failed_reload:
                self._entries[name] = entry
        if failed_reload:
            log.warning("model %s: reload failed (%s); still serving", name, entry.reason)
            self._retire(entry)  # no request has seen it: released at once
            return entry
        log.info(
            "model %s: %s%s", name, entry.state.value, f" ({entry.reason})" if entry.reason else ""
        )
        if old is not None:
            self._retire(old)
        return entry

    def unload(self, name: str) -> None:
        with self._lock:
            if name in self._busy:
                raise ConflictError(
                    f"model {name!r} is being loaded; retry once that is done",
                    retry_after_s=1,
                    model=name,
                )
            old = self._entries.pop(name, None)
        if old is None:
            raise ModelNotFoundError(f"no model named {name!r}", model=name)
        self._retire(old)

    def _retire(self, entry: ModelEntry) -> None:
        """Release a swapped-out entry's versions, on a thread of its own, once no request
        holds them (requests that looked one up before the swap still submit to it)."""
        versions = list(entry.versions.values())
        if not versions:
            return
        # Only weak references and the batchers (which hold the runtimes) go to the thread:
        # a strong reference there would keep the version alive for ever.
        held = [weakref.ref(version) for version in versions]
        batchers = [version.batcher for version in versions]
        del versions, entry
        with self._lock:
            self._releasing += 1
        threading.Thread(
            target=self._release, args=(held, batchers), name="release-model", daemon=True
        ).start()

    def _release(self, held: list[weakref.ref[ModelVersion]], batchers: list[Batcher]) -> None:
        try:
            until = time.monotonic() + self._release_timeout_s
            while any(ref() is not None for ref in held) and time.monotonic() < until:
                time.sleep(_RELEASE_POLL_S)
            if any(ref() is not None for ref in held):
                log.warning("a swapped-out model version is still held: closing it anyway")
            for batcher in batchers:
                batcher.close()  # what is queued finishes first
            names = ", ".join(batcher.name for batcher in batchers)
            batchers.clear()  # the last references to the runtimes and their sessions
            gc.collect()
            trim_heap()
            log.info("released %s", names)
        finally:
            with self._released:
                self._releasing -= 1
                self._released.notify_all()

    def ready(self) -> bool:
        """The server's half of readiness: nothing is loading and at least one model serves
        (``AppState.status`` adds start-up and the drain)."""
        entries = self.entries()
        return (
            bool(entries)
            and all(e.state is not ModelState.LOADING for e in entries)
            and any(e.ready() for e in entries)
        )

    def close(self) -> None:
        """At shutdown: every batcher stops (what is queued finishes first)."""
        for entry in self.entries():
            for version in entry.versions.values():
                version.batcher.close()
