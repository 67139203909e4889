"""The fitted out-of-distribution statistics of a model version, on disk.

The fitted statistics file (``models/<name>/<version>/ood.npz``, ``numpy.savez_compressed``,
readable with ``allow_pickle=False``). M methods, L layers, K classes; ``i`` is the layer's
position (0-based):

=========================  ========  =======  ===============================================
key                        shape     dtype    meaning
=========================  ========  =======  ===============================================
``format``                 ()        int64    1 (this layout)
``energy_temperature``     ()        float64  T of the energy score (1 unless stated)
``methods``                (M,)      str      ``energy`` or ``mahalanobis``, each at most once
``thresholds``             (M,)      float64  flagged when a method's score is above it
``centers``                (M,)      float64  each method's median on the validation split
``layer_names``            (L,)      str      the layers, as ModelInfo names them
``layer_outputs``          (L,)      str      the ONNX tensors to fetch (graph outputs added)
``layer_method``           (L,)      int64    the index in ``methods`` each layer feeds
``layer_center``           (L,)      float64  per layer: mean distance on the validation split
``layer_scale``            (L,)      float64  ... and its standard deviation (> 0)
``layer_grid``             (L,)      int64    g of the pooling grid (1 for (N, D) outputs)
``means_<i>``              (K, D_i)  float32  class means of layer i's features
``cholesky_<i>``           (P_i,)    float32  the lower-triangular Cholesky factor L of the
                                              shared covariance S = L L^T (ridge included),
                                              its lower triangle packed row by row
                                              (``numpy.tril_indices`` order), P_i =
                                              D_i (D_i + 1) / 2; a positive diagonal
=========================  ========  =======  ===============================================

``mahalanobis`` needs at least one layer; ``energy`` none. A method with one layer scores
its raw distance (its centre and scale are ignored).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from service.ood import METHODS, MahalanobisLayer, OodDetector, OodMethod

__all__ = ["FORMAT_VERSION", "OodStatsError", "load_detector", "save_detector"]

FORMAT_VERSION = 1


class OodStatsError(ValueError):
    """An ood.npz file that cannot be used; the message says what is wrong."""


def save_detector(path: Path, detector: OodDetector) -> None:
    """Write a fitted detector as the ood.npz the module docstring describes."""
    if not detector.fitted:
        raise ValueError("only a detector with a threshold for every method can be saved")
    layers = detector.layers
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_VERSION, np.int64),
        "energy_temperature": np.array(detector.energy_temperature, np.float64),
        "methods": np.array([m.name for m in detector.methods], dtype=str),
        "thresholds": np.array([m.threshold for m in detector.methods], np.float64),
        "centers": np.array([m.center for m in detector.methods], np.float64),
        "layer_names": np.array([layer.name for layer in layers], dtype=str).reshape(-1),
        "layer_outputs": np.array([layer.output for layer in layers], dtype=str).reshape(-1),
        "layer_method": np.array(
            [j for j, m in enumerate(detector.methods) for _ in m.layers], np.int64
        ),
        "layer_center": np.array([layer.center for layer in layers], np.float64),
        "layer_scale": np.array([layer.scale for layer in layers], np.float64),
        "layer_grid": np.array([layer.grid for layer in layers], np.int64),
    }
    for i, layer in enumerate(layers):
        arrays[f"means_{i}"] = np.asarray(layer.means, np.float32)
        rows, cols = np.tril_indices(layer.dimensions)
        arrays[f"cholesky_{i}"] = np.asarray(layer.cholesky, np.float32)[rows, cols]
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def _array(
    data: Mapping[str, np.ndarray], key: str, kind: str, shape: Sequence[int | None]
) -> np.ndarray:
    if key not in data:
        raise OodStatsError(f"{key!r} is missing")
    a = data[key]
    if a.dtype.kind != kind:
        raise OodStatsError(f"{key!r} has dtype {a.dtype}, expected kind {kind!r}")
    if a.ndim != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, a.shape, strict=True)
    ):
        wanted = tuple("*" if s is None else s for s in shape)
        raise OodStatsError(f"{key!r} has shape {a.shape}, expected {wanted}")
    if kind == "f" and not np.isfinite(a).all():
        raise OodStatsError(f"{key!r} has values that are not finite")
    return a


def _parse(data: Mapping[str, np.ndarray]) -> OodDetector:
    version = _array(data, "format", "i", ())
    if int(version) != FORMAT_VERSION:
        raise OodStatsError(f"format {int(version)}; this version reads {FORMAT_VERSION}")
    temperature = float(_array(data, "energy_temperature", "f", ()))
    if temperature <= 0:
        raise OodStatsError(f"energy_temperature must be positive, not {temperature}")
    names = [str(n) for n in _array(data, "methods", "U", (None,))]
    m = len(names)
    if m == 0 or len(set(names)) != m or not set(names) <= set(METHODS):
        raise OodStatsError(f"methods {names}: each of {', '.join(METHODS)} at most once")
    thresholds = _array(data, "thresholds", "f", (m,))
    centers = _array(data, "centers", "f", (m,))
    if (thresholds <= centers).any():
        raise OodStatsError("every threshold must lie above its method's validation median")
    layer_names = _array(data, "layer_names", "U", (None,))
    n_layers = len(layer_names)
    outputs = _array(data, "layer_outputs", "U", (n_layers,))
    owner = _array(data, "layer_method", "i", (n_layers,))
    center = _array(data, "layer_center", "f", (n_layers,))
    scale = _array(data, "layer_scale", "f", (n_layers,))
    grid = _array(data, "layer_grid", "i", (n_layers,))
    if ((owner < 0) | (owner >= m)).any():
        raise OodStatsError(f"layer_method must index the {m} methods")
    if (scale <= 0).any():
        raise OodStatsError("layer_scale must be positive")
    if (grid < 1).any():
        raise OodStatsError("layer_grid must be at least 1")
    classes: int | None = None
    layers: list[list[MahalanobisLayer]] = [[] for _ in names]
    for i in range(n_layers):
        means = _array(data, f"means_{i}", "f", (classes, None))
        classes, dims = means.shape
        packed = _array(data, f"cholesky_{i}", "f", (dims * (dims + 1) // 2,))
        factor = np.zeros((dims, dims), packed.dtype)
        factor[np.tril_indices(dims)] = packed
        if not (np.diag(factor) > 0).all():
            raise OodStatsError(f"'cholesky_{i}' has a diagonal entry that is not positive")
        layer = MahalanobisLayer(
            str(layer_names[i]),
            str(outputs[i]),
            means,
            factor,
            grid=int(grid[i]),
            center=float(center[i]),
            scale=float(scale[i]),
        )
        layers[int(owner[i])].append(layer)
    methods = []
    for j, name in enumerate(names):
        if (name == "mahalanobis") != bool(layers[j]):
            raise OodStatsError(f"method {name} has {len(layers[j])} layers")
        methods.append(OodMethod(name, float(thresholds[j]), float(centers[j]), tuple(layers[j])))
    return OodDetector(tuple(methods), temperature)


def load_detector(path: Path) -> OodDetector:
    """Read and validate an ood.npz; raises OodStatsError naming the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return _parse({key: data[key] for key in data.files})
    except OodStatsError as exc:
        raise OodStatsError(f"{path}: {exc}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OodStatsError(f"{path} is not a readable .npz file: {exc}") from None
