"""Why a network chose a class: saliency maps for any served CNN, without gradients.

A method is one asynchronous function of a ``Subject`` (the input as the model takes it, the
target class, a way to score batches through the model) and its parameters, returning a
``Heatmap``: values in [0, 1] (higher: more important for the target) on a grid laid over
the model input, each cell placed like a receptive field (``Grid``: its size, the jump
between cells and the centre of the first, in model-input pixels). ``METHODS`` lists them;
a new method is one entry: its parameters, when a model cannot have it, and its function.

- ``occlusion`` (Zeiler and Fergus 2014), for every model: a window slides over the input,
  filled with the value that normalises to zero (the channel means the model was trained
  with), and the cell's value is how much the target's probability drops. The occluded
  copies are scored through ``Subject.scores`` in chunks (the batcher's), made one chunk at
  a time, so memory holds one chunk of copies and other requests interleave.
- ``cam`` (class activation mapping, Zhou et al. 2016), for models whose head is global
  average pooling then one linear layer (``service.head``): the last feature maps weighted
  by the target's row of the linear layer, from one forward pass. For such a head Grad-CAM
  (Selvaraju et al. 2017) is the same map up to a constant: the gradient of the target's
  score with respect to a feature map is its weight divided by the map's area.

Values are scaled into [0, 1]: occlusion's drops clipped at 0 (an occlusion that raises the
target's probability shows as unimportant) and divided by their maximum; CAM's maps min-max,
as Zhou et al. show them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidParameterError
from service.graph import ReceptiveField
from service.model_card import InputSpec

__all__ = [
    "METHODS",
    "Grid",
    "Heatmap",
    "Method",
    "Subject",
    "copies",
    "fill_values",
    "occlusion_defaults",
]

# Occluded copies one request may ask for: with MobileNetV2 on one core, about 6 s of work.
MAX_OCCLUDED = 1024


@dataclass(frozen=True)
class Grid:
    """Where heatmap cell (i, j) lies in model-input pixels: centred at start + (i, j) *
    jump, ``size`` across (a receptive field's terms)."""

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]

    def to_json(self) -> dict[str, list[float]]:
        return ReceptiveField(self.size, self.jump, self.start).to_json()


@dataclass(frozen=True)
class Heatmap:
    values: np.ndarray  # (rows, cols) float32 in [0, 1]
    grid: Grid

    def pixels(self, size: tuple[int, int]) -> np.ndarray:
        """The heatmap over every pixel of a ``size`` (H, W) input: bilinear between cell
        centres, the nearest edge cell beyond them."""
        (y0, y1, fy), (x0, x1, fx) = (
            _between(n, cells, jump, start)
            for n, cells, jump, start in zip(
                size, self.values.shape, self.grid.jump, self.grid.start, strict=True
            )
        )
        v = self.values
        top = v[y0][:, x0] * (1 - fx) + v[y0][:, x1] * fx
        bottom = v[y1][:, x0] * (1 - fx) + v[y1][:, x1] * fx
        return (top * (1 - fy[:, None]) + bottom * fy[:, None]).astype(np.float32)


def _between(
    pixels: int, cells: int, jump: float, start: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel along an axis: the cells on either side of it and how far it is from
    the first towards the second."""
    position = np.clip((np.arange(pixels) - start) / jump, 0, cells - 1)
    low = np.floor(position).astype(int)
    return low, np.minimum(low + 1, cells - 1), position - low


@dataclass
class Subject:
    """What a method explains, and how it may score inputs."""

    input: np.ndarray  # one input, in the model's layout and datatype
    spec: InputSpec
    target: int
    probability: float  # the target's, for the input as it is
    scores: Callable[[np.ndarray], Awaitable[np.ndarray]]  # batch -> probabilities (N, K)
    chunk: int  # inputs per call to ``scores``
    cam: Callable[[], Awaitable[tuple[np.ndarray, np.ndarray]]] | None = None
    cam_grid: Grid | None = None


Run = Callable[[Subject, Mapping[str, int]], Awaitable[Heatmap]]


@dataclass(frozen=True)
class Method:
    name: str
    # (the input spec, the query's values by name) -> the parameters, defaults filled in
    parameters: Callable[[InputSpec, Mapping[str, str | None]], dict[str, int]]
    # why a model cannot have this method (None: it can); given the model's CAM grid
    unsupported: Callable[[Grid | None, str | None], str | None]
    run: Run
    # Whether it reads the classifier head's feature maps: the one forward pass that scores
    # the input gives them too (Subject.cam).
    needs_cam: bool = False


def _normalised(values: np.ndarray, *, floor: float | None = 0.0) -> np.ndarray:
    """Values scaled into [0, 1]: clipped at ``floor`` (None: their minimum) and divided by
    what is then their maximum."""
    low = float(values.min()) if floor is None and values.size else (floor or 0.0)
    shifted = np.clip(values - low, 0.0, None).astype(np.float32)
    top = float(shifted.max()) if shifted.size else 0.0
    return shifted / top if top > 0 else shifted


def fill_values(spec: InputSpec, image: np.ndarray) -> np.ndarray:
    """Per channel, the value an occluded pixel takes: 0 for a normalised float input (the
    training data's mean); for a uint8 input, the mean pixel (from the card's mean when it
    gives one, else the image's own)."""
    if spec.dtype == "float32":
        return np.zeros(spec.channels, np.float32)
    if spec.mean is not None:
        return np.round(np.asarray(spec.mean) * 255).astype(np.uint8)
    axes = tuple(a for a in range(3) if a != spec.channel_axis)
    return np.round(image.mean(axis=axes)).astype(np.uint8)


def occlusion_defaults(spec: InputSpec) -> tuple[int, int]:
    """(window, stride) that suit the input: a seventh of the side at half a window for
    photos (32 at 16 for 224 pixels: 169 copies), a fifth at a third for small inputs (6 at
    2 for 28 pixels: 144 copies), where the objects fill the frame."""
    side = min(spec.size)
    if side > 64:
        window = round(side / 7)
        return window, max(1, window // 2)
    window = max(2, round(side * 3 / 14))
    return window, max(1, window // 3)


def _integer(query: Mapping[str, str | None], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidParameterError(
            f"{name} must be a whole number of pixels, not {text!r}", parameter=name
        ) from None


def _occlusion_parameters(spec: InputSpec, query: Mapping[str, str | None]) -> dict[str, int]:
    window, stride = occlusion_defaults(spec)
    window, stride = _integer(query, "window", window), _integer(query, "stride", stride)
    height, width = spec.size
    if not 1 <= window <= min(height, width):
        raise InvalidParameterError(
            f"window must be 1 to {min(height, width)} pixels (the model input is "
            f"{height}x{width}), not {window}",
            parameter="window",
        )
    if stride < 1:
        raise InvalidParameterError(f"stride must be at least 1, not {stride}", parameter="stride")
    copies = _positions(height, window, stride) * _positions(width, window, stride)
    if copies > MAX_OCCLUDED:
        raise InvalidParameterError(
            f"window {window} at stride {stride} makes {copies} occluded copies; at most "
            f"{MAX_OCCLUDED}: use a larger stride",
            parameter="stride",
            copies=copies,
            limit=MAX_OCCLUDED,
        )
    return {"window": window, "stride": stride}


def _positions(side: int, window: int, stride: int) -> int:
    return (side - window) // stride + 1


async def occlusion(subject: Subject, parameters: Mapping[str, int]) -> Heatmap:
    window, stride = parameters["window"], parameters["stride"]
    spec = subject.spec
    height, width = spec.size
    rows, cols = _positions(height, window, stride), _positions(width, window, stride)
    fill = fill_values(spec, subject.input)
    y_axis, x_axis = spec.spatial_axes
    shape = [1, 1, 1]
    shape[spec.channel_axis] = -1
    fill = fill.reshape(shape)
    drops = np.empty(rows * cols, np.float32)
    for first in range(0, rows * cols, subject.chunk):
        cells = range(first, min(first + subject.chunk, rows * cols))
        batch = np.repeat(subject.input[None], len(cells), axis=0)
        for k, cell in enumerate(cells):
            top, left = (cell // cols) * stride, (cell % cols) * stride
            window_slice: list[Any] = [slice(None)] * 3
            window_slice[y_axis] = slice(top, top + window)
            window_slice[x_axis] = slice(left, left + window)
            batch[k][tuple(window_slice)] = fill
        probabilities = await subject.scores(batch)
        drops[first : first + len(cells)] = subject.probability - probabilities[:, subject.target]
    centre = (window - 1) / 2
    grid = Grid((window, window), (stride, stride), (centre, centre))
    return Heatmap(_normalised(drops.reshape(rows, cols)), grid)


def _no_parameters(spec: InputSpec, query: Mapping[str, str | None]) -> dict[str, int]:
    given = [name for name in ("window", "stride") if query.get(name)]
    if given:
        raise InvalidParameterError(
            f"{', '.join(given)}: cam takes no window or stride (its grid is the last feature "
            "maps')",
            parameter=given[0],
        )
    return {}


def _cam_unsupported(grid: Grid | None, reason: str | None) -> str | None:
    return reason if grid is None else None


async def cam(subject: Subject, parameters: Mapping[str, int]) -> Heatmap:
    assert subject.cam is not None and subject.cam_grid is not None  # checked: _cam_unsupported
    weights, features = await subject.cam()  # (K, C), (C, h, w)
    maps = np.tensordot(weights[subject.target], features, axes=(0, 0))
    return Heatmap(_normalised(maps, floor=None), subject.cam_grid)


def _unsupported_never(grid: Grid | None, reason: str | None) -> str | None:
    return None


METHODS: dict[str, Method] = {
    "occlusion": Method("occlusion", _occlusion_parameters, _unsupported_never, occlusion),
    "cam": Method("cam", _no_parameters, _cam_unsupported, cam, needs_cam=True),
}


def copies(spec: InputSpec, parameters: Mapping[str, int]) -> int:
    """How many inputs an occlusion runs (0 for other methods): for the metrics."""
    if "window" not in parameters:
        return 0
    height, width = spec.size
    window, stride = parameters["window"], parameters["stride"]
    return math.prod((_positions(height, window, stride), _positions(width, window, stride)))
