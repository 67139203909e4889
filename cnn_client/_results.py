"""What the client returns: frozen value objects, one per thing the server describes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Classification",
    "Explanation",
    "FeatureMap",
    "FeatureStats",
    "HeatmapGrid",
    "InputSpec",
    "LayerInfo",
    "ModelInfo",
    "OutOfDistribution",
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
    """A served model: versions, input, labels, inspectable layers and explanation methods.

    ``version`` is the version this describes: the one served when a request names none,
    unless one was asked for (model.json's ``default_version``, else the highest), and
    ``precision`` its weights' ("fp32", "int8"; None from an older server).
    ``explanations`` names the methods ``explain`` accepts for this model (empty from a
    server older than explanations). ``raw`` keeps the whole JSON object, fields this client
    does not know included.
    """

    name: str
    versions: tuple[str, ...]
    state: str
    providers: tuple[str, ...]
    input: InputSpec | None
    labels: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    description: str | None = None
    explanations: tuple[str, ...] = ()
    version: str | None = None
    precision: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def latest_version(self) -> str | None:
        """The highest version (not always the one served by default: see ``version``)."""
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
class OutOfDistribution:
    """How unlike the model's training data one image looks, as the server judged it.

    ``score`` is higher for less familiar images; ``flagged`` is the server's verdict
    against ``threshold`` (``None`` where no threshold was fitted: then nothing is flagged).
    ``method`` names the scoring method or methods, joined with "+" (``"energy"``,
    ``"energy+mahalanobis"``).
    """

    score: float
    threshold: float | None
    flagged: bool
    method: str


@dataclass(frozen=True)
class Classification:
    """The top-k predictions for one image, most probable first.

    ``ood`` is the server's out-of-distribution verdict, ``None`` from a server or model
    that gives none.
    """

    predictions: tuple[Prediction, ...]
    model: str
    model_version: str
    filename: str | None
    ood: OutOfDistribution | None = None

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


@dataclass(frozen=True)
class HeatmapGrid:
    """Where the cells of a heatmap lie on the model input, per axis as (height, width).

    Cell (i, j) is centred at ``start + (i, j) * jump`` in model-input pixels and covers
    ``size`` pixels (a receptive field's terms; cells may overlap or reach past the edge).
    """

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """The model-input coordinates (y, x) of the centre of cell (row, col)."""
        return (
            self.start[0] + row * self.jump[0],
            self.start[1] + col * self.jump[1],
        )


def _spread(pixels: int, cells: int, jump: float, start: float) -> npt.NDArray[np.float64]:
    """A (pixels, cells) matrix of linear-interpolation weights along one axis: each pixel
    mixes the two cells whose centres enclose it, or copies the nearest edge cell."""
    centres = start + jump * np.arange(cells)
    where = np.arange(pixels, dtype=np.float64)
    # Interpolating each unit vector gives that cell's weight at every pixel; np.interp holds
    # the end values beyond the first and last centres.
    return np.stack([np.interp(where, centres, unit) for unit in np.eye(cells)], axis=1)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Why the model chose (or would choose) ``target`` for one image: a heatmap.

    ``heatmap`` is a read-only float32 array (rows, cols) with values in [0, 1], higher
    meaning more important for ``target``; ``grid`` places its cells on the model input.
    ``target.probability`` is the target's probability for the image as sent.
    ``parameters`` are the method's, defaults filled in by the server (occlusion:
    ``window`` and ``stride`` in pixels; cam: none). ``elapsed_ms`` is what computing it
    took, the original computation's when ``cached``.
    """

    model: str
    model_version: str
    method: str
    parameters: Mapping[str, int]
    target: Prediction
    heatmap: npt.NDArray[np.float32]
    grid: HeatmapGrid
    cached: bool
    elapsed_ms: float

    @property
    def shape(self) -> tuple[int, int]:
        """The heatmap's (rows, cols)."""
        rows, cols = self.heatmap.shape
        return (rows, cols)

    def pixel_map(self, size: tuple[int, int]) -> npt.NDArray[np.float32]:
        """The heatmap spread over every pixel of a model input of ``size`` (height, width).

        Bilinear between cell centres and the nearest edge cell beyond them, as the server
        draws its overlay; pass the model's input size (``ModelInfo.input.size``).
        """
        height, width = (int(v) for v in size)
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive (height, width), got {size!r}")
        rows, cols = self.shape
        down = _spread(height, rows, self.grid.jump[0], self.grid.start[0])
        across = _spread(width, cols, self.grid.jump[1], self.grid.start[1])
        return (down @ self.heatmap.astype(np.float64) @ across.T).astype(np.float32)
