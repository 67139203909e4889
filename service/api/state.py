"""What the endpoints share: settings, the data plane, metrics. One per app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.dataplane import DataPlane
from service.explainer import Explainer
from service.metrics import Metrics
from service.repository import ModelRepository
from service.v2.plane import V2Plane

__all__ = ["AppState", "State", "get_state"]


@dataclass
class AppState:
    settings: Settings
    dataplane: DataPlane
    metrics: Metrics
    v2: V2Plane
    explainer: Explainer
    loading: bool = True  # until start-up has tried every model
    draining: bool = False  # from SIGTERM on: not ready, finishing what is in flight
    # The event loop's clock when the drain ends: requests still running then are answered
    # 503 shutting_down. None until the drain begins.
    drain_ends_at: float | None = None
    drain_listeners: list[Callable[[float], None]] = field(default_factory=list)

    @property
    def repository(self) -> ModelRepository:
        return self.dataplane.repository

    @property
    def status(self) -> str:
        """The one readiness rule: "ready" once start-up has tried every model, at least one
        serves and the server is not draining; else "loading", "draining" or
        "unavailable". /health/ready, /v2/health/ready and the probes all read this."""
        if self.draining:
            return "draining"
        if self.loading:
            return "loading"
        return "ready" if self.repository.ready() else "unavailable"

    def begin_drain(self) -> None:
        """Start the drain's clock (on the event loop; once): ``drain_timeout_s`` from now,
        and tell the listeners (the middleware cuts the deadlines of requests in flight)."""
        self.draining = True
        if self.drain_ends_at is not None:
            return
        self.drain_ends_at = asyncio.get_running_loop().time() + self.settings.drain_timeout_s
        for listener in self.drain_listeners:
            listener(self.drain_ends_at)


async def get_state(request: Request) -> AppState:
    # A coroutine on purpose: FastAPI runs a plain-def dependency in its thread pool, a
    # thread hand-off on every request for an attribute lookup.
    return request.app.state.cnnserve


State = Annotated[AppState, Depends(get_state)]
