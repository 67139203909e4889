"""What the Open Inference Protocol tests share: the server handle, paths, real inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from testkit import MODELS

FASHION_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FASHION_MODELS = ("lenet5-fashion", "vggnet-fashion", "resnet-fashion")
# The session's server takes this admin key (CNNSERVE_ADMIN_KEYS): the model repository
# extension needs it, passed as a header (tritonclient: ``headers=ADMIN``).
ADMIN_KEY = "v2-tests-admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}


@dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:<port>
    host: str  # 127.0.0.1:<port>, as tritonclient wants it
    model_dir: Path
    log: Path


def normalise(images: npt.NDArray[np.uint8], model: str) -> npt.NDArray[np.float32]:
    """Images as ``model``'s input tensor (N, 1, 28, 28): scaled to [0, 1], then the mean and
    std of its model.json."""
    spec = json.loads((MODELS / model / "model.json").read_text())["input"]
    scaled = images.astype(np.float32)[:, None] / np.float32(255.0)
    mean = np.asarray(spec["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray((scaled - mean) / std, dtype=np.float32)


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float64)
