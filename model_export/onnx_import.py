"""`cnnserve import-onnx`: bring any ONNX image classifier into the repository.

Checked before anything is written: it loads in ONNX Runtime, has one 4-D image input and a
class-score output whose size matches the labels, and it runs on a real photo preprocessed
the way the service will preprocess it. What the file says is read from it: the input's
layout (NCHW, or NHWC as TensorFlow exports are: told by where the channel count sits), its
datatype (float32, or uint8 pixels for a graph that normalises them itself) and whether the
output is already a softmax (the graph ends in Softmax); options override what is guessed.
Needs onnx and onnxruntime, not torch: it works from the install `make serve` makes.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from model_export.errors import ImportModelError
from model_export.photos import photo_paths
from model_export.repository import default_model_dir, next_version, write_model_files
from service.model_card import InputSpec, ModelCard
from service.preprocessing import preprocess

__all__ = ["ImportSpec", "import_onnx_model", "output_kind"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
# Probabilities from a Softmax sum to 1; a logits output almost never does.
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ImportSpec:
    """How to preprocess images for the imported model; None or "auto": from the model."""

    color: str = "rgb"  # rgb or grey
    mean: list[float] | None = None  # default: ImageNet's for rgb, 0 for grey (float input)
    std: list[float] | None = None  # default: ImageNet's for rgb, 1 for grey (float input)
    size: tuple[int, int] | None = None  # (H, W); default: the model's static input size
    resize: str = "center-crop"  # stretch or center-crop
    resize_shorter: int | None = None  # default: 256/224 of the crop, as torchvision does
    output_kind: str = "auto"  # auto (Softmax at the end: probabilities), logits, probabilities
    layout: str = "auto"  # auto, NCHW or NHWC


def _labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ImportModelError(f"labels file {path} does not exist")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label]
    if not labels:
        raise ImportModelError(f"labels file {path} has no labels (one per line)")
    return labels


def _layout(shape: list[Any], channels: int, asked: str, name: str, color: str) -> str:
    """NCHW or NHWC: where the channel count sits, or what was asked."""
    asked = asked.upper()
    if asked in ("NCHW", "NHWC"):
        axis = 1 if asked == "NCHW" else 3
        if isinstance(shape[axis], int) and shape[axis] != channels:
            raise ImportModelError(
                f"input {name!r} has shape {shape}: {asked} puts {shape[axis]} channels there, "
                f"but --color gives {channels}"
            )
        return asked
    if asked != "AUTO":
        raise ImportModelError(f"--layout must be auto, nchw or nhwc, not {asked.lower()!r}")
    fits = [
        layout
        for layout, axis in (("NCHW", 1), ("NHWC", 3))
        if shape[axis] == channels or not isinstance(shape[axis], int)
    ]
    static = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if shape[axis] == channels]
    if len(static) == 1:
        return static[0]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        found = shape[1] if shape[1] in (1, 3, 4) or shape[3] not in (1, 3, 4) else shape[3]
        raise ImportModelError(
            f"input {name!r} has {found} channels; --color {color} gives {channels} "
            f"(shape {shape}: channels at axis 1, NCHW, or axis 3, NHWC)"
        )
    raise ImportModelError(
        f"input {name!r} has shape {shape}: its layout is ambiguous; say --layout nchw or nhwc"
    )


def _input_spec(session: ort.InferenceSession, spec: ImportSpec) -> InputSpec:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ImportModelError(
            f"the model has {len(inputs)} inputs ({names}); an image classifier has exactly one"
        )
    arg = inputs[0]
    dtype = _DTYPES.get(arg.type)
    if dtype is None or len(arg.shape) != 4:
        raise ImportModelError(
            f"input {arg.name!r} is {arg.type} {arg.shape}; expected a 4-D float or uint8 image "
            "tensor (N, C, H, W or N, H, W, C)"
        )
    color = {"rgb": "RGB", "grey": "L", "gray": "L"}.get(spec.color.lower())
    if color is None:
        raise ImportModelError(f"--color must be rgb or grey, not {spec.color!r}")
    channels = 3 if color == "RGB" else 1
    layout = _layout(list(arg.shape), channels, spec.layout, arg.name, spec.color.lower())
    spatial = arg.shape[2:] if layout == "NCHW" else arg.shape[1:3]
    static = [d if isinstance(d, int) and d > 0 else None for d in spatial]
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
    mean, std = spec.mean, spec.std
    if dtype == "uint8":
        if mean or std:
            raise ImportModelError(
                f"input {arg.name!r} takes uint8 pixels (0..255): the graph normalises them "
                "itself, so --mean and --std do not apply"
            )
    else:
        mean = mean or (list(IMAGENET_MEAN) if color == "RGB" else [0.0])
        std = std or (list(IMAGENET_STD) if color == "RGB" else [1.0])
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise ImportModelError(f"--mean and --std need {channels} value(s) each, std positive")
    if spec.resize not in ("stretch", "center-crop"):
        raise ImportModelError(f"--resize must be stretch or center-crop, not {spec.resize!r}")
    shorter = spec.resize_shorter
    if spec.resize == "center-crop" and shorter is None:
        shorter = round(min(size) * 256 / 224)
    return InputSpec(
        name=arg.name,
        color_mode=color,
        size=size,
        layout=layout,
        dtype=dtype,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
        resize=spec.resize,
        resize_shorter=shorter,
    )


def output_kind(model: onnx.ModelProto, name: str) -> str:
    """ "probabilities" when the graph's output ``name`` comes out of a Softmax (through
    Identity or Cast nodes), else "logits"."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(name)
    while node is not None and node.op_type in ("Identity", "Cast") and node.input:
        node = producers.get(node.input[0])
    return "probabilities" if node is not None and node.op_type == "Softmax" else "logits"


def _check_runs(session: ort.InferenceSession, card: ModelCard) -> None:
    photos = photo_paths()
    if not photos:
        raise ImportModelError("no photo to test the model on (service/static/samples)")
    spec = card.input
    image = preprocess(next(iter(photos.values())).read_bytes(), spec, max_pixels=10**8)
    try:
        outputs = session.run(None, {spec.name: image[None]})
    except Exception as exc:  # ORT's errors are untyped
        raise ImportModelError(f"the model fails on a real image: {exc}") from exc
    scores = np.asarray(outputs[0])
    classes = len(card.labels)
    if scores.shape != (1, classes):
        raise ImportModelError(
            f"output {card.output.name!r} has shape {scores.shape} for "
            f"one image; {classes} labels need (1, {classes})"
        )
    if not np.isfinite(scores).all():
        raise ImportModelError("the model's output on a real image is not finite")
    if card.output.kind == "probabilities" and (
        scores.min() < 0 or abs(float(scores.sum()) - 1) > _SUM_TOLERANCE
    ):
        raise ImportModelError(
            f"output {card.output.name!r} is taken as probabilities, but on a real image its "
            f"values sum to {float(scores.sum()):.4f} (min {float(scores.min()):.4f}): say "
            "--output logits"
        )


def import_onnx_model(
    path: Path,
    *,
    name: str,
    labels_path: Path,
    spec: ImportSpec,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Copy a checked classifier into ``model_dir/name/<next version>`` (default: the folder
    the server reads); return a summary."""
    model_dir = model_dir or default_model_dir()
    if not path.is_file():
        raise ImportModelError(f"{path} does not exist")
    from service.repository import valid_model_name

    if not valid_model_name(name):
        raise ImportModelError(f"{name!r} is not a valid model name (letters, digits, . _ -)")
    labels = _labels(labels_path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        proto = onnx.load(str(path), load_external_data=False)
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
    kind = spec.output_kind
    if kind == "auto":
        kind = output_kind(proto, outputs[0].name)
    if kind not in ("logits", "probabilities"):
        raise ImportModelError("--output must be auto, logits or probabilities")
    card = ModelCard(
        name=name,
        description=f"imported from {path.name}",
        labels=labels,
        input=input_spec,
        output={"name": outputs[0].name, "kind": kind},
        produced_by={
            "command": f"cnnserve import-onnx {path} --name {name}",
            "imported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        },
    )
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
        "input": input_spec.model_dump(mode="json"),
        "output": card.output.model_dump(mode="json"),
    }
