"""`cnnserve import-onnx`: bring any ONNX image classifier into the repository.

Checked before anything is written: it loads in ONNX Runtime, has one (N, C, H, W) float
input and a class-score output whose size matches the labels, and it runs on a real photo
preprocessed the way the service will preprocess it. Needs onnx and onnxruntime, not torch.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_export.errors import ImportModelError
from model_export.photos import photo_paths
from model_export.repository import next_version, write_model_files

__all__ = ["ImportSpec", "import_onnx_model"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImportSpec:
    """How to preprocess images for the imported model; None means "from the model"."""

    color: str = "rgb"  # rgb or grey
    mean: list[float] | None = None  # default: ImageNet's for rgb, 0 for grey
    std: list[float] | None = None  # default: ImageNet's for rgb, 1 for grey
    size: tuple[int, int] | None = None  # (H, W); default: the model's static input size
    resize: str = "center-crop"  # stretch or center-crop
    resize_shorter: int | None = None  # default: 256/224 of the crop, as torchvision does
    output_kind: str = "logits"  # logits (softmax applied when serving) or probabilities


def _labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ImportModelError(f"labels file {path} does not exist")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label]
    if not labels:
        raise ImportModelError(f"labels file {path} has no labels (one per line)")
    return labels


def _input_spec(session: ort.InferenceSession, spec: ImportSpec) -> dict[str, Any]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ImportModelError(
            f"the model has {len(inputs)} inputs ({names}); an image classifier has exactly one"
        )
    arg = inputs[0]
    if arg.type != "tensor(float)" or len(arg.shape) != 4:
        raise ImportModelError(
            f"input {arg.name!r} is {arg.type} {arg.shape}; expected a float tensor (N, C, H, W)"
        )
    color = {"rgb": "RGB", "grey": "L", "gray": "L"}.get(spec.color.lower())
    if color is None:
        raise ImportModelError(f"--color must be rgb or grey, not {spec.color!r}")
    channels = arg.shape[1]
    if isinstance(channels, int) and channels != (3 if color == "RGB" else 1):
        raise ImportModelError(
            f"input {arg.name!r} has {channels} channels; --color "
            f"{spec.color} gives {3 if color == 'RGB' else 1}"
        )
    static = [d if isinstance(d, int) and d > 0 else None for d in arg.shape[2:]]
    size = spec.size
    if size is None and static[0] is not None and static[1] is not None:
        size = (static[0], static[1])
    if size is None:
        raise ImportModelError(
            f"input {arg.name!r} has no fixed height and width "
            f"({arg.shape}); give them with --size H W"
        )
    if None not in static and tuple(static) != tuple(size):
        raise ImportModelError(f"--size {size} does not match the model's input {arg.shape}")
    n = 3 if color == "RGB" else 1
    mean = spec.mean or (list(IMAGENET_MEAN) if color == "RGB" else [0.0])
    std = spec.std or (list(IMAGENET_STD) if color == "RGB" else [1.0])
    if len(mean) != n or len(std) != n or any(s <= 0 for s in std):
        raise ImportModelError(f"--mean and --std need {n} value(s) each, std positive")
    if spec.resize not in ("stretch", "center-crop"):
        raise ImportModelError(f"--resize must be stretch or center-crop, not {spec.resize!r}")
    shorter = spec.resize_shorter
    if spec.resize == "center-crop" and shorter is None:
        shorter = round(min(size) * 256 / 224)
    return {
        "name": arg.name,
        "color_mode": color,
        "size": list(size),
        "mean": mean,
        "std": std,
        "resize": spec.resize,
        "resize_shorter": shorter,
    }


def _check_runs(session: ort.InferenceSession, card: dict[str, Any]) -> None:
    from service.model_card import InputSpec
    from service.preprocessing import preprocess

    photos = photo_paths()
    if not photos:
        raise ImportModelError("no photo to test the model on: pip install scikit-image")
    spec = InputSpec.model_validate(card["input"])
    image = preprocess(next(iter(photos.values())).read_bytes(), spec, max_pixels=10**8)
    try:
        outputs = session.run(None, {spec.name: image[None]})
    except Exception as exc:  # ORT's errors are untyped
        raise ImportModelError(f"the model fails on a real image: {exc}") from exc
    scores = np.asarray(outputs[0])
    classes = len(card["labels"])
    if scores.shape != (1, classes):
        raise ImportModelError(
            f"output {card['output']['name']!r} has shape {scores.shape} for "
            f"one image; {classes} labels need (1, {classes})"
        )
    if not np.isfinite(scores).all():
        raise ImportModelError("the model's output on a real image is not finite")


def import_onnx_model(
    path: Path, *, name: str, labels_path: Path, spec: ImportSpec, model_dir: Path = Path("models")
) -> dict[str, Any]:
    """Copy a checked classifier into ``model_dir/name/<next version>``; return a summary."""
    if not path.is_file():
        raise ImportModelError(f"{path} does not exist")
    from service.repository import valid_model_name

    if not valid_model_name(name):
        raise ImportModelError(f"{name!r} is not a valid model name (letters, digits, . _ -)")
    labels = _labels(labels_path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportModelError(f"{path} does not load in ONNX Runtime: {exc}") from exc
    input_spec = _input_spec(session, spec)
    outputs = session.get_outputs()
    classes = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(classes, int) and classes != len(labels):
        raise ImportModelError(
            f"output {outputs[0].name!r} has {classes} classes but "
            f"{labels_path} has {len(labels)} labels"
        )
    if spec.output_kind not in ("logits", "probabilities"):
        raise ImportModelError("--output must be logits or probabilities")
    card: dict[str, Any] = {
        "name": name,
        "description": f"imported from {path.name}",
        "labels": labels,
        "input": input_spec,
        "output": {"name": outputs[0].name, "kind": spec.output_kind},
        "produced_by": {
            "command": f"cnnserve import-onnx {path} --name {name}",
            "imported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        },
    }
    _check_runs(session, card)
    root = model_dir / name
    version = next_version(root)
    (root / version).mkdir(parents=True)
    shutil.copyfile(path, root / version / "model.onnx")
    write_model_files(root, card)
    return {
        "name": name,
        "version": version,
        "path": str(root / version / "model.onnx"),
        "labels": len(labels),
        "input": card["input"],
    }
