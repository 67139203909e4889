"""Writing a model into the repository: version folders, model.json, labels and Triton config.

No torch here: `cnnserve import-onnx` uses it with nothing but onnx and ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["next_version", "triton_config", "write_model_files"]


def next_version(model_root: Path) -> str:
    """The next integer version folder under ``model_root`` ("1" when there is none)."""
    if not model_root.is_dir():
        return "1"
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    return str(max(versions, default=0) + 1)


def triton_config(card: dict[str, Any]) -> str:
    """A config.pbtxt that lets Triton's ONNX Runtime backend serve the same folder."""
    spec = card["input"]
    channels = 1 if spec["color_mode"] == "L" else 3
    dims = ", ".join(str(d) for d in (channels, *spec["size"]))
    return (
        f'name: "{card["name"]}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        f'input [\n  {{ name: "{spec["name"]}" data_type: TYPE_FP32 dims: [ {dims} ] }}\n]\n'
        f'output [\n  {{ name: "{card["output"]["name"]}" data_type: TYPE_FP32 '
        f'dims: [ {len(card["labels"])} ] label_filename: "labels.txt" }}\n]\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )


def write_model_files(model_root: Path, card: dict[str, Any]) -> None:
    """Write model.json, labels.txt and config.pbtxt beside the version folders."""
    model_root.mkdir(parents=True, exist_ok=True)
    (model_root / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    (model_root / "labels.txt").write_text("\n".join(card["labels"]) + "\n")
    (model_root / "config.pbtxt").write_text(triton_config(card))
