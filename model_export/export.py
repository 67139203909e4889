"""Export a trained network to ONNX, verify it against PyTorch, write it to a model repository.

The repository layout is ``<model_dir>/<name>/<version>/model.onnx`` with
``<model_dir>/<name>/model.json`` (what the service needs to serve it) and a Triton
``config.pbtxt`` plus ``labels.txt`` (so the same folder loads in Triton's ONNX Runtime
backend).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from model_export.architectures import build, count_parameters
from model_export.datasets import load_dataset
from model_export.errors import RunNotFoundError
from model_export.onnx_graph import readable_names
from model_export.repository import next_version, write_model_files
from model_export.verify import ATOL, RTOL, verify_onnx
from service.model_card import InputSpec

__all__ = ["ExportResult", "export_model", "export_run"]

log = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    name: str
    version: str
    path: Path
    max_abs_diff: float
    parameters: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}


def _to_onnx(model: nn.Module, spec: InputSpec, path: Path, opset: int) -> None:
    example = torch.zeros(*spec.shape(1))
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    proto = onnx.load(str(path))
    leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
    readable_names(proto, leaves)
    onnx.save(proto, str(path))


def export_model(
    model: nn.Module,
    *,
    name: str,
    spec: InputSpec,
    labels: list[str],
    images: np.ndarray,
    model_dir: Path,
    metadata: dict[str, Any],
    opset: int = 17,
) -> ExportResult:
    """Export ``model`` as the next version of ``name``, verified on ``images``.

    ``images`` is a float32 batch already preprocessed as ``spec`` says (N, C, H, W). The
    version folder is only kept when verification passes.
    """
    model = model.eval().cpu()
    root = model_dir / name
    version = next_version(root)
    version_dir = root / version
    version_dir.mkdir(parents=True, exist_ok=False)
    onnx_path = version_dir / "model.onnx"
    try:
        _to_onnx(model, spec, onnx_path, opset)
        max_diff = verify_onnx(onnx_path, model, images)
    except BaseException:
        shutil.rmtree(version_dir)
        raise
    parameters = count_parameters(model)
    extra = {k: v for k, v in metadata.items() if k not in ("description", "produced_by")}
    card = {
        "name": name,
        "description": metadata.get("description", ""),
        "labels": labels,
        "input": spec.model_copy(update={"name": INPUT_NAME}),
        "output": {"name": OUTPUT_NAME, "kind": "logits"},
        "parameters": parameters,
        **extra,
        "produced_by": {
            "torch": torch.__version__,
            "onnx_opset": opset,
            "exported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "verification": {
                "max_abs_diff": max_diff,
                "rtol": RTOL,
                "atol": ATOL,
                "images": len(images),
            },
        }
        | metadata.get("produced_by", {}),
    }
    write_model_files(root, card)
    log.info("exported %s version %s (max |torch - onnxruntime| = %.2e)", name, version, max_diff)
    return ExportResult(name, version, onnx_path, max_diff, parameters)


def export_run(
    run_dir: Path,
    *,
    name: str,
    model_dir: Path = Path("models"),
    opset: int = 17,
    verify_images: int = 256,
    calibrate: bool = False,
) -> ExportResult:
    """Export the checkpoint of a `cnnserve train` run folder; with ``calibrate``, also fit
    its temperature and OOD statistics (model_export.calibrate; a minute or more on a CPU,
    which `cnnserve export` spends by default)."""
    checkpoint_path = run_dir / "checkpoint.pt"
    if not checkpoint_path.is_file():
        raise RunNotFoundError(f"{run_dir} is not a run folder: no checkpoint.pt in it")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = list(checkpoint["labels"])
    model = build(checkpoint["arch"], in_channels=1, num_classes=len(labels))
    model.load_state_dict(checkpoint["state_dict"])
    spec = InputSpec(
        color_mode="L",
        size=tuple(checkpoint["image_size"]),
        mean=(checkpoint["mean"],),
        std=(checkpoint["std"],),
    )
    data = load_dataset(checkpoint["dataset"])
    test = data.test.images[:verify_images].astype(np.float32) / 255.0
    images = ((test - checkpoint["mean"]) / checkpoint["std"])[:, None].astype(np.float32)
    config = metrics["config"]
    metadata = {
        "description": f"{checkpoint['arch']} trained on {checkpoint['dataset']} by cnnserve",
        "architecture": checkpoint["arch"],
        "dataset": checkpoint["dataset"],
        "metrics": {
            "test_accuracy": metrics["test_accuracy"],
            "val_accuracy": metrics["val_accuracy"],
            "best_epoch": metrics["best_epoch"],
            "epochs_run": len(metrics["history"]),
            "train_seconds": round(metrics["train_seconds"], 1),
            "trained_on": metrics.get("device", "unknown"),
        },
        "produced_by": {
            "command": (
                f"cnnserve train --arch {config['arch']} --dataset {config['dataset']}"
                f" --epochs {config['epochs']} --seed {config['seed']}"
                f"{'' if config['augment'] else ' --no-augment'}; "
                f"cnnserve export {run_dir} --name {name}"
            ),
            "train_torch": metrics.get("torch"),
        },
    }
    result = export_model(
        model,
        name=name,
        spec=spec,
        labels=labels,
        images=images,
        model_dir=model_dir,
        metadata=metadata,
        opset=opset,
    )
    curves = run_dir / "curves.png"
    if curves.is_file():
        shutil.copyfile(curves, model_dir / name / "curves.png")
    if calibrate:
        from model_export.calibrate import calibrate_dataset, summary

        facts = calibrate_dataset(
            name,
            dataset=checkpoint["dataset"],
            model_dir=model_dir,
            version=result.version,
            command=f"cnnserve export {run_dir} --name {name}",
        )
        result.extra["calibration"] = summary(facts)
    return result
