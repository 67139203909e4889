"""What the client returns: frozen value objects, one per thing the server describes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Classification",
    "FeatureMap",
    "FeatureStats",
    "InputSpec",
    "LayerInfo",
    "ModelInfo",
    "Prediction",
    "ReceptiveField",
]


@dataclass(frozen=True)
class ReceptiveField:
    """The input region one output cell of a layer sees, per axis as (height, width).

    ``size`` is its extent in input pixels, ``jump`` the input distance between neighbouring
    cells, and ``start`` the input coordinate of the centre of cell (0, 0).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


@dataclass(frozen=True)
class LayerInfo:
    """One layer whose activations ``feature_maps`` can return."""

    name: str
    op_type: str
    output_shape: tuple[int, ...]
    receptive_field: ReceptiveField | None


@dataclass(frozen=True)
class InputSpec:
    """How the server turns an uploaded image into the model's input tensor."""

    name: str
    shape: tuple[int, ...]
    color_mode: str
    size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str | None


@dataclass(frozen=True)
class ModelInfo:
    """A served model: versions, input, labels and inspectable layers.

    ``raw`` keeps the whole JSON object, fields this client does not know included.
    """

    name: str
    versions: tuple[str, ...]
    state: str
    providers: tuple[str, ...]
    input: InputSpec | None
    labels: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    description: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def latest_version(self) -> str | None:
        """The version the server uses when a request names none (the highest)."""
        numeric = [v for v in self.versions if v.isdigit()]
        if numeric:
            return max(numeric, key=int)
        return self.versions[-1] if self.versions else None


@dataclass(frozen=True)
class Prediction:
    """One class: ``index`` is its position in the model's output and in its labels."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    """The top-k predictions for one image, most probable first."""

    predictions: tuple[Prediction, ...]
    model: str
    model_version: str
    filename: str | None

    @property
    def top(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]


@dataclass(frozen=True)
class FeatureStats:
    """Summary statistics of one layer's activations, computed by the server."""

    min: float
    max: float
    mean: float


@dataclass(frozen=True, eq=False)
class FeatureMap:
    """One layer's activations for one image.

    ``array`` is a read-only float32 array of shape (channels, height, width).
    """

    name: str
    op_type: str
    array: npt.NDArray[np.float32]
    receptive_field: ReceptiveField | None
    stats: FeatureStats

    @property
    def shape(self) -> tuple[int, ...]:
        """The activations' shape, (C, H, W)."""
        return tuple(self.array.shape)
