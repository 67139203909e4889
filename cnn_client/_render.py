"""Rich tables and JSON documents for the CLI's results (imported by cli.py only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from cnn_client._results import (
    Classification,
    Explanation,
    FeatureMap,
    ModelInfo,
    OutOfDistribution,
)

__all__ = [
    "classifications_json",
    "classifications_table",
    "explanation_json",
    "explanation_table",
    "feature_maps_json",
    "feature_maps_table",
    "models_json",
    "models_table",
]


def _widest(texts: Iterable[str]) -> int:
    return max((len(text) for text in texts), default=0)


def classifications_json(results: Sequence[Classification]) -> dict[str, Any]:
    """The server's own response shape, so that scripts can treat both alike (``ood`` only
    where the server sent it)."""
    first = results[0] if results else None
    documents = []
    for result in results:
        document: dict[str, Any] = {
            "filename": result.filename,
            "predictions": [dataclasses.asdict(p) for p in result.predictions],
        }
        if result.ood is not None:
            document["ood"] = dataclasses.asdict(result.ood)
        documents.append(document)
    return {
        "model": first.model if first else None,
        "model_version": first.model_version if first else None,
        "results": documents,
    }


def _ood_note(ood: OutOfDistribution | None) -> str:
    """The warning a flagged image gets in the table, naming the method(s) that said so."""
    if ood is None or not ood.flagged:
        return ""
    # Spaces around "+" let a narrow column wrap "energy+mahalanobis" instead of cutting it.
    return f"⚠ out of distribution ({ood.method.replace('+', ' + ')})"


def classifications_table(results: Sequence[Classification]) -> Table:
    """Top-k rows per image; a flagged image gets a note beside its first row (the column
    appears only when some image is flagged)."""
    title = f"{results[0].model} (version {results[0].model_version})" if results else None
    table = Table(title=title)
    table.add_column("image", no_wrap=True, min_width=_widest(r.filename or "" for r in results))
    table.add_column("rank", justify="right")
    labels = (p.label for r in results for p in r.predictions)
    table.add_column("label", no_wrap=True, min_width=_widest(labels))
    table.add_column("probability", justify="right")
    table.add_column("index", justify="right")
    notes = [_ood_note(result.ood) for result in results]
    if any(notes):
        table.add_column("note", style="bold yellow")
    for result, note in zip(results, notes, strict=True):
        for rank, prediction in enumerate(result.predictions, start=1):
            cells = [
                result.filename if rank == 1 else "",
                str(rank),
                prediction.label,
                f"{prediction.probability:.4f}",
                str(prediction.index),
            ]
            if any(notes):
                cells.append(note if rank == 1 else "")
            table.add_row(*cells, end_section=rank == len(result.predictions))
    return table


def _input_summary(model: ModelInfo) -> str:
    if model.input is None:
        return "?"
    size = "x".join(str(v) for v in model.input.size)
    return f"{model.input.color_mode} {size}".strip()


def models_json(models: Sequence[ModelInfo]) -> dict[str, Any]:
    return {"models": [dict(model.raw) for model in models]}


def _explanations_caption(models: Sequence[ModelInfo]) -> str | None:
    """Which models each explanation method serves, e.g. "explain: occlusion (all models),
    cam (mobilenetv2-imagenet)"; a caption, as a column would not fit 80 characters."""
    methods: dict[str, list[str]] = {}
    for model in models:
        for method in model.explanations:
            methods.setdefault(method, []).append(model.name)
    if not methods:
        return None
    every = len(models) > 1
    parts = [
        f"{method} ({'all models' if every and len(names) == len(models) else ', '.join(names)})"
        for method, names in methods.items()
    ]
    return "explain: " + ", ".join(parts)


def models_table(models: Sequence[ModelInfo]) -> Table:
    captions = ["*: served when a request names no version"]
    captions += [c for c in (_explanations_caption(models),) if c]
    table = Table(title="models", caption="\n".join(captions))
    table.add_column("name", no_wrap=True, min_width=_widest(m.name for m in models))
    for column in ("versions", "state", "input", "classes", "layers", "providers"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.name,
            ", ".join(v + ("*" if v == model.version else "") for v in model.versions),
            model.state,
            _input_summary(model),
            str(len(model.labels)),
            str(len(model.layers)),
            ", ".join(p.removesuffix("ExecutionProvider") for p in model.providers),
        )
    return table


def _pair(values: tuple[Any, Any] | None) -> str:
    return "x".join(str(v) for v in values) if values is not None else ""


def feature_maps_json(maps: Sequence[FeatureMap]) -> dict[str, Any]:
    """Shapes, receptive fields and statistics; the activations themselves are left out."""
    return {
        "layers": [
            {
                "name": fmap.name,
                "op_type": fmap.op_type,
                "shape": list(fmap.shape),
                "receptive_field": (
                    dataclasses.asdict(fmap.receptive_field) if fmap.receptive_field else None
                ),
                "stats": dataclasses.asdict(fmap.stats),
            }
            for fmap in maps
        ]
    }


def feature_maps_table(maps: Sequence[FeatureMap]) -> Table:
    table = Table(title="feature maps")
    table.add_column("layer", no_wrap=True, min_width=_widest(m.name for m in maps))
    for column in ("op", "shape", "rf size", "rf jump", "min", "max", "mean"):
        table.add_column(column)
    for fmap in maps:
        rf = fmap.receptive_field
        table.add_row(
            fmap.name,
            fmap.op_type,
            "x".join(str(v) for v in fmap.shape),
            _pair(rf.size if rf else None),
            _pair(rf.jump if rf else None),
            f"{fmap.stats.min:.4g}",
            f"{fmap.stats.max:.4g}",
            f"{fmap.stats.mean:.4g}",
        )
    return table


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    """The server's own response shape, heatmap values included (rounded as it rounds)."""
    grid = explanation.grid
    return {
        "model": explanation.model,
        "model_version": explanation.model_version,
        "method": explanation.method,
        "parameters": dict(explanation.parameters),
        "target": dataclasses.asdict(explanation.target),
        "heatmap": {
            "shape": list(explanation.shape),
            "values": np.round(explanation.heatmap.astype(np.float64), 5).tolist(),
            "grid": {
                "size": [_number(v) for v in grid.size],
                "jump": [_number(v) for v in grid.jump],
                "start": [_number(v) for v in grid.start],
            },
        },
        "elapsed_ms": explanation.elapsed_ms,
        "cached": explanation.cached,
    }


def _size(values: tuple[float, float]) -> str:
    return "x".join(str(_number(v)) for v in values)


def explanation_table(explanation: Explanation, image: str) -> Table:
    """What was explained and how, one fact a row; the heatmap itself is left out."""
    table = Table(
        title=f"{explanation.model} (version {explanation.model_version})", show_header=False
    )
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    target, grid = explanation.target, explanation.grid
    parameters = ", ".join(f"{name} {value}" for name, value in explanation.parameters.items())
    computed = f"computed in {explanation.elapsed_ms:.0f} ms"
    rows = {
        "image": image,
        "target": f"{target.label} (index {target.index})",
        "probability": f"{target.probability:.4f}",
        "method": f"{explanation.method} ({parameters})" if parameters else explanation.method,
        "heatmap": f"{'x'.join(map(str, explanation.shape))} cells of {_size(grid.size)} px, "
        f"every {_size(grid.jump)} px",
        "cached": f"yes ({computed} first)" if explanation.cached else f"no ({computed})",
    }
    for what, value in rows.items():
        table.add_row(what, value)
    return table
