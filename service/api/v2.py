"""The Open Inference Protocol (KServe V2) over REST, on the same data plane as /v1."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["v2"])
