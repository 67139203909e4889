"""What the endpoints share: settings, the data plane, metrics. One per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.dataplane import DataPlane
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
    loading: bool = True  # until start-up has tried every model
    draining: bool = False  # from SIGTERM on: not ready, finishing what is in flight

    @property
    def repository(self) -> ModelRepository:
        return self.dataplane.repository


async def get_state(request: Request) -> AppState:
    # A coroutine on purpose: FastAPI runs a plain-def dependency in its thread pool, a
    # thread hand-off on every request for an attribute lookup.
    return request.app.state.cnnserve


State = Annotated[AppState, Depends(get_state)]
