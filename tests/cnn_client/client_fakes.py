"""Responses per the API's contract, for tests that inject a transport or a fake server."""

from __future__ import annotations

from typing import Any

__all__ = ["FAKE_HEATMAP", "explanation_body"]

FAKE_HEATMAP = [[0.0, 0.25, 0.5, 1.0], [0.125, 0.375, 0.75, 0.0625], [0.5, 0.5, 0.0, 0.875]]


def explanation_body(**changes: Any) -> dict[str, Any]:
    """An explain response per the contract (occlusion, window 6 at stride 2), with
    top-level ``changes``."""
    body: dict[str, Any] = {
        "model": "lenet5-fashion",
        "model_version": "2",
        "method": "occlusion",
        "parameters": {"window": 6, "stride": 2},
        "target": {"index": 9, "label": "Ankle boot", "probability": 0.875},
        "heatmap": {
            "shape": [3, 4],
            "values": FAKE_HEATMAP,
            "grid": {"size": [6, 6], "jump": [2, 2], "start": [2.5, 2.5]},
        },
        "elapsed_ms": 12.5,
        "cached": False,
    }
    return body | changes
