"""The model repository: ``<model_dir>/<name>/<version>/model.onnx`` plus ``<name>/model.json``.

Every version folder is loaded and warmed; the highest version serves unless a request names
another. A model that cannot load is kept as ``unavailable`` with its reason, and the rest
serve. ``load`` and ``unload`` swap models while serving: requests already holding a
version finish on it, new ones see the new state.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.batching import Batcher, BatchObserver
from service.errors import ModelNotFoundError, ModelUnavailableError
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
# A request that looked up a version just before a swap still submits to it within this time.
RETIRE_GRACE_S = 5.0
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

    @property
    def latest(self) -> str | None:
        return self.version_names[-1] if self.version_names else None

    def get(self, version: str | None) -> ModelVersion:
        """The named version, or the highest; raises a domain error when it cannot serve."""
        if self.state is ModelState.LOADING:
            raise ModelUnavailableError(f"model {self.name} is still loading", model=self.name)
        wanted = version or self.latest
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


class ModelRepository:
    """Loads, serves and swaps the models of one folder. Thread-safe."""

    def __init__(
        self,
        model_dir: Path,
        *,
        session: SessionConfig,
        batching: BatchingConfig,
        observer: Callable[[str], BatchObserver] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self._session = session
        self._batching = batching
        self._observer = observer
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()

    def names_on_disk(self) -> list[str]:
        if not self.model_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def names(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [self._entries[name] for name in sorted(self._entries)]

    def entry(self, name: str) -> ModelEntry:
        with self._lock:
            found = self._entries.get(name)
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
                log.warning(
                    "model %s version %s runs on CPU: %s",
                    name,
                    folder.name,
                    runtime.placement.fallback_reason,
                )
            entry.versions[folder.name] = ModelVersion(
                folder.name, runtime, self._batcher(runtime, f"{name}/{folder.name}")
            )
        latest = entry.latest
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
        """(Re)load ``name`` from disk and swap it in; the old versions drain, then close.

        With ``keep_serving``, a reload that cannot serve is dropped and the serving entry
        stays (Triton's rule for explicit loads); the failed entry is returned all the same.
        """
        entry = self._build(name)
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
            self._retire(entry, grace_s=0)
            return entry
        log.info(
            "model %s: %s%s", name, entry.state.value, f" ({entry.reason})" if entry.reason else ""
        )
        if old is not None:
            self._retire(old)
        return entry

    def unload(self, name: str) -> None:
        with self._lock:
            old = self._entries.pop(name, None)
        if old is None:
            raise ModelNotFoundError(f"no model named {name!r}", model=name)
        self._retire(old)

    @staticmethod
    def _retire(entry: ModelEntry, *, grace_s: float = RETIRE_GRACE_S) -> None:
        """Close the batchers of a swapped-out entry once requests that hold it are queued."""

        def close() -> None:
            for version in entry.versions.values():
                version.batcher.close()

        if grace_s <= 0:
            close()
        else:
            timer = threading.Timer(grace_s, close)
            timer.daemon = True
            timer.start()

    def ready(self) -> bool:
        """True when nothing is loading and at least one model serves."""
        entries = self.entries()
        return (
            bool(entries)
            and all(e.state is not ModelState.LOADING for e in entries)
            and any(e.state is ModelState.READY for e in entries)
        )

    def close(self) -> None:
        for entry in self.entries():
            self._retire(entry, grace_s=0)
