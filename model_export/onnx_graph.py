"""Make exported ONNX graphs read well: node and tensor names from the PyTorch module tree.

The TorchScript exporter names nodes after the module scope they come from
(``/block1/shortcut/shortcut.0/Conv``). We rename each node to the dotted module path
(``block1.shortcut.0``), adding the op type where the op is not the module's own
(``block1.add`` for the residual sum in a block's forward), and give each node's output
tensor the node's name, so a layer and its feature map share one name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import onnx

__all__ = ["readable_names"]


def _module_path(scope: str) -> tuple[str, str]:
    """'/block1/shortcut/shortcut.0/Conv' -> ('block1.shortcut.0', 'Conv')."""
    *segments, op = scope.strip("/").split("/")
    parts: list[str] = []
    for segment in segments:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment  # nested Sequential scopes repeat the parent's path
        elif parts:
            parts.append(segment.removeprefix(".".join(parts) + "."))
        else:
            parts.append(segment)
    return ".".join(parts), re.sub(r"_\d+$", "", op)  # "Constant_1" -> "Constant"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def readable_names(model: onnx.ModelProto, leaf_modules: Iterable[str]) -> onnx.ModelProto:
    """Rename nodes and their single outputs after the modules they came from, in place."""
    leaves = set(leaf_modules)
    graph = model.graph
    keep = {t.name for t in graph.input} | {t.name for t in graph.output}
    keep |= {t.name for t in graph.initializer}
    taken: set[str] = set()
    renamed: dict[str, str] = {}
    for node in graph.node:
        if not node.name.startswith("/"):
            taken.add(node.name)
            continue
        path, op = _module_path(node.name)
        own = path in leaves and op != "Constant"  # a module's constants are not the module
        name = path if own else f"{path}.{op.lower()}" if path else op.lower()
        node.name = _unique(name, taken)
        if len(node.output) == 1 and node.output[0] not in keep:
            renamed[node.output[0]] = node.name
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    return model
