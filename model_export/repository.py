"""Writing a model into the repository: version folders, model.json, labels and Triton config.

No torch here: `cnnserve import-onnx` uses it with nothing but onnx and ONNX Runtime. The
card is ``service.model_card.ModelCard``, the contract the service reads; the Triton
configuration comes from the same card (``service.model_card.triton_config``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.model_card import ModelCard, load_card, triton_config

__all__ = [
    "default_model_dir",
    "next_version",
    "precision",
    "record_version_facts",
    "served_default",
    "set_default_version",
    "to_pbtxt",
    "write_model_files",
]


def default_model_dir() -> Path:
    """Where commands that write models write by default: the folder the server reads
    (``CNNSERVE_MODEL_DIR``), else ``models``."""
    return Path(os.environ.get("CNNSERVE_MODEL_DIR") or "models")


def next_version(model_root: Path) -> str:
    """The next integer version folder under ``model_root`` ("1" when there is none)."""
    if not model_root.is_dir():
        return "1"
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    return str(max(versions, default=0) + 1)


_ENUMS = frozenset({"data_type"})  # protobuf enum fields: written bare, not quoted


def _pbtxt_field(key: str, value: Any) -> str:
    return f"{key}: {value if key in _ENUMS else _pbtxt_value(value)}"


def _pbtxt_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[ " + ", ".join(map(str, value)) + " ]"
    return str(value)


def to_pbtxt(config: dict[str, Any]) -> str:
    """A Triton configuration (``triton_config``) in the protobuf text format of config.pbtxt,
    with dynamic batching on."""
    lines = [_pbtxt_field(key, config[key]) for key in ("name", "platform", "max_batch_size")]
    for block in ("input", "output"):
        tensors = [
            "  { " + " ".join(_pbtxt_field(k, v) for k, v in tensor.items()) + " }"
            for tensor in config[block]
        ]
        lines.append(f"{block} [\n" + ",\n".join(tensors) + "\n]")
    lines.append("dynamic_batching { max_queue_delay_microseconds: 2000 }")
    return "\n".join(lines) + "\n"


def write_model_files(model_root: Path, card: ModelCard | dict[str, Any]) -> ModelCard:
    """Write model.json, labels.txt and config.pbtxt beside the version folders. Facts about
    versions already in model.json (``versions``) are kept unless ``card`` restates them, and
    so is its ``default_version``."""
    card = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
    model_root.mkdir(parents=True, exist_ok=True)
    path = model_root / "model.json"
    document = card.model_dump(mode="json", exclude_defaults=False)
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            before, pinned = previous.get("versions") or {}, previous.get("default_version")
        except (ValueError, AttributeError):
            before, pinned = {}, None
        document["versions"] = before | document.get("versions", {})
        if document.get("default_version") is None and pinned is not None:
            document["default_version"] = pinned  # a pinned default stays until changed
    if not document.get("versions"):
        document.pop("versions", None)
    path.write_text(json.dumps(document, indent=2) + "\n")
    (model_root / "labels.txt").write_text("\n".join(card.labels) + "\n")
    (model_root / "config.pbtxt").write_text(to_pbtxt(triton_config(card)))
    return ModelCard.model_validate(document)


def _update_card(model_root: Path, change: Any) -> None:
    """Apply ``change`` to model.json's parsed document and write it back atomically."""
    path = model_root / "model.json"
    card = json.loads(path.read_text())
    change(card)
    temporary = path.with_name(".model.json.tmp")
    temporary.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(temporary, path)


def record_version_facts(model_root: Path, version: str, facts: Mapping[str, Any]) -> None:
    """Merge ``facts`` into what model.json says of ``version`` (``versions[version]``),
    keeping every other key and version (calibration and quantization each keep their own
    facts there); written atomically."""

    def merge(card: dict[str, Any]) -> None:
        versions = card.setdefault("versions", {})
        versions.setdefault(str(version), {}).update(facts)
        card["versions"] = dict(sorted(versions.items(), key=lambda item: int(item[0])))

    _update_card(model_root, merge)


def served_default(model_root: Path) -> str | None:
    """The version served now to a request naming none (``ModelCard.served_default`` over
    the numbered folders)."""
    versions = [p.name for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    return load_card(model_root / "model.json").served_default(versions)


def set_default_version(model_root: Path, version: str) -> None:
    """Make ``version`` the one a request that names none gets (model.json's
    ``default_version``)."""

    def point(card: dict[str, Any]) -> None:
        card["default_version"] = str(version)

    _update_card(model_root, point)


def precision(card: Mapping[str, Any], version: str) -> str:
    """ "fp32", "fp16" or "int8": what a parsed model.json says of one version's graph."""
    return ModelCard.model_validate(card).version_facts(str(version)).precision
