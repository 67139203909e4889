"""The cnnserve client SDK: classify images, read feature maps and explain predictions.

    >>> from cnn_client import Client
    >>> with Client("http://127.0.0.1:8000") as client:
    ...     result = client.classify("boot.png", model="lenet5-fashion")
    ...     print(result.top.label, result.top.probability)
    ...     why = client.explain("boot.png", model="lenet5-fashion")
    ...     print(why.target.label, why.heatmap.shape)

Needs only httpx and numpy; Pillow is used only when you pass a PIL image. The ``cnnserve``
command line lives in :mod:`cnn_client.cli`, which this package never imports.
"""

from cnn_client._client import AsyncClient, Client
from cnn_client._images import ImageInput
from cnn_client._results import (
    Classification,
    Explanation,
    FeatureMap,
    FeatureStats,
    HeatmapGrid,
    InputSpec,
    LayerInfo,
    ModelInfo,
    OutOfDistribution,
    Prediction,
    ReceptiveField,
)
from cnn_client.errors import (
    CnnServeConnectionError,
    CnnServeError,
    CnnServeTimeoutError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)

__all__ = [
    "AsyncClient",
    "Classification",
    "Client",
    "CnnServeConnectionError",
    "CnnServeError",
    "CnnServeTimeoutError",
    "Explanation",
    "FeatureMap",
    "FeatureStats",
    "HeatmapGrid",
    "ImageInput",
    "InputSpec",
    "InvalidInputError",
    "InvalidResponseError",
    "LayerInfo",
    "ModelInfo",
    "NotFoundError",
    "OutOfDistribution",
    "Prediction",
    "ReceptiveField",
    "ServerError",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
]
