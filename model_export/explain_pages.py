"""How ``make explain-report`` shows its results: the tables between the markers of
docs/explain.md, the figures under docs/img/explain/ (overlays drawn by the service's own
``overlay_png``, laid out and plotted with matplotlib) and, when asked, JSON."""

from __future__ import annotations

import io
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_export.datasets import FASHION_LABELS
from model_export.explain_metrics import (
    BEATS_RANDOM_TARGET,
    FRACTIONS,
    SPEARMAN_TARGET,
    ImageResult,
    ModelResult,
    ceiling_summary,
)
from service.preprocessing import to_pixels
from service.visualize import overlay_png

__all__ = ["END", "START", "as_json", "cpu_name", "to_markdown", "write_block", "write_figures"]

START, END = "<!-- explain-report:start -->", "<!-- explain-report:end -->"
Cell = tuple[str, np.ndarray | None]  # a picture under its title (None: an empty cell)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined correlation is null."""
    return None if np.isnan(value) else round(value, 4)


def as_json(meta: dict[str, Any], results: list[ModelResult]) -> dict[str, Any]:
    models = {}
    for r in results:
        models[r.model] = {
            "seconds": r.seconds,
            "weights_redrawn": r.redrawn,
            "methods": {m: r.summary(m) for m in r.methods},
            "ceiling": ceiling_summary(r),
        }
        if not r.truth:  # a few photos: each one
            models[r.model]["images"] = [
                {
                    "name": i.name,
                    "target": i.label,
                    "probability": round(i.probability, 4),
                    "auc": {k: _number(v) for k, v in i.auc.items()},
                    "spearman": {k: _number(v) for k, v in i.spearman.items()},
                }
                for i in r.images
            ]
    return {**meta, "models": models}


# -- figures ---------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(fig: Any, path: Path) -> None:
    """The figure as a 256-colour PNG (dithered): a third of the bytes of a full-colour one
    of these photos, for a figure committed to the repository."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    _pyplot().close(fig)
    image = Image.open(buffer).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def _overlay(result: ModelResult, image: ImageResult, method: str, *, random: bool) -> Cell:
    heat = (image.random_maps if random else image.maps)[method]
    png = overlay_png(to_pixels(image.input, result.spec), heat)
    title = (
        f"{method}, random weights"
        if random
        else f"{method}: {image.label} {image.probability:.2f}"
    )
    return title, np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _picture(result: ModelResult, image: ImageResult, title: str) -> Cell:
    pixels = to_pixels(image.input, result.spec)
    return title, pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def _grid(rows: list[list[Cell]], path: Path, *, inches: float) -> None:
    plt = _pyplot()
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(cols * inches, len(rows) * inches * 1.12), squeeze=False
    )
    for row, line in zip(axes, rows, strict=True):
        for ax, (title, picture) in zip(
            row, [*line, *[("", None)] * (cols - len(line))], strict=True
        ):
            ax.axis("off")
            if picture is not None:
                ax.imshow(picture, cmap="gray", interpolation="nearest")
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _fashion_rows(fashion: list[ModelResult]) -> list[list[Cell]]:
    """One test image per class (the first of it among those measured), every map of it."""
    rows = []
    for label, name in enumerate(FASHION_LABELS):
        first = next((k for k, t in enumerate(fashion[0].truth) if t == label), None)
        if first is None:
            continue
        image = fashion[0].images[first]
        row = [_picture(fashion[0], image, f"{image.name}\n{name}")]
        for r in fashion:
            for method in r.methods:
                _, picture = _overlay(r, r.images[first], method, random=False)
                shown = r.images[first]
                title = f"{r.model.split('-')[0]} {method}\n{shown.label} {shown.probability:.2f}"
                row.append((title, picture))
        rows.append(row)
    return rows


def _deletion_plot(results: list[ModelResult], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.3 * len(results), 3.1), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        for key in [*r.methods, "random", *(f"shuffled {m}" for m in r.methods)]:
            mean = np.mean([i.curves[key] for i in r.images], axis=0)
            area = np.mean([i.auc[key] for i in r.images])
            style = "--" if key == "random" else ":" if key.startswith("shuffled") else "-"
            ax.plot(FRACTIONS, mean, style, label=f"{key} {area:.3f}")
        ax.set_title(f"{r.model} ({len(r.images)} images)", fontsize=8)
        ax.set_xlabel("fraction of pixels removed", fontsize=8)
        ax.legend(title="mean AUC", fontsize=7, title_fontsize=7)
    axes[0][0].set_ylabel("probability of the target (mean)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def write_figures(results: list[ModelResult], folder: Path, photos: tuple[str, ...]) -> list[str]:
    """The PNGs, in ``folder``; their file names. ``photos``: the ones to show."""
    folder.mkdir(parents=True, exist_ok=True)
    fashion = [r for r in results if r.truth]
    others = [r for r in results if not r.truth]
    rows = [
        [_picture(r, i, i.name), *(_overlay(r, i, m, random=False) for m in r.methods)]
        for r in others
        for i in r.images
        if i.name in photos
    ]
    if rows:
        _grid(rows, folder / "photos.png", inches=2.6)
    if fashion:
        _grid(_fashion_rows(fashion), folder / "fashion.png", inches=1.7)
    examples = [
        [
            (f"{r.model.split('-')[0]} {title}", picture)
            for m in r.methods
            for title, picture in (_overlay(r, r.images[0], m, random=b) for b in (False, True))
        ]
        for r in results
        if r.images and r.images[0].random_maps
    ]
    _grid(examples, folder / "randomisation.png", inches=1.9)
    _deletion_plot(results, folder / "deletion.png")
    return sorted(p.name for p in folder.glob("*.png"))


# -- tables ----------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _deletion_table(results: list[ModelResult]) -> list[str]:
    lines = [
        "| model | method | images | mean AUC | random order: mean AUC | below it | target "
        "| shuffled map: mean AUC | below it | flat maps |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for r in results:
        for m in r.methods:
            s = r.summary(m)
            lines.append(
                f"| `{r.model}` | {m} | {s['images']} | {s['auc']:.3f} | {s['random_auc']:.3f} "
                f"| {s['beats_random']:.0%} | {_verdict(s['deletion_met'])} "
                f"| {s['shuffled_auc']:.3f} | {s['beats_shuffled']:.0%} | {s['flat_maps']} |"
            )
    return lines


def _randomisation_table(results: list[ModelResult]) -> list[str]:
    lines = [
        "| model | method | images | weights redrawn | mean &rho; | quartiles | below 0.5 "
        "| undefined | target |",
        "|---|---|--:|--:|--:|---|--:|--:|---|",
    ]
    for r in results:
        for m in r.methods:
            s = r.summary(m)
            mean = "—" if s["spearman_mean"] is None else f"{s['spearman_mean']:.2f}"
            below = (
                "—" if s["spearman_below_target"] is None else f"{s['spearman_below_target']:.0%}"
            )
            quartiles = " / ".join(f"{q:.2f}" for q in s["spearman_quartiles"])
            lines.append(
                f"| `{r.model}` | {m} | {s['spearman_images']} | {r.redrawn} | {mean} "
                f"| {quartiles} | {below} | {s['spearman_undefined']} "
                f"| {_verdict(s['randomisation_met'])} |"
            )
    return lines


def _ceiling_table(results: list[ModelResult]) -> list[str]:
    lines = [
        "| model | occlusion | images | mean AUC | random order: mean AUC | below it |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in results:
        for key, s in ceiling_summary(r).items():
            what = "as served" if key == "occlusion" else key.removeprefix("occlusion, ")
            lines.append(
                f"| `{r.model}` | {what} | {s['images']} | {s['auc']:.3f} "
                f"| {s['random_auc']:.3f} | {s['beats_random']:.0%} |"
            )
    return lines


def _per_image_table(result: ModelResult) -> list[str]:
    methods = result.methods
    lines = [
        "| image | target | probability | "
        + " | ".join(f"{m} AUC | shuffled {m}" for m in methods)
        + " | random order | "
        + " | ".join(f"{m} &rho;" for m in methods)
        + " |",
        "|---|---|--:|" + "--:|" * (3 * len(methods) + 1),
    ]
    for i in result.images:
        areas = " | ".join(f"{i.auc[m]:.3f} | {i.auc[f'shuffled {m}']:.3f}" for m in methods)
        rho = " | ".join(f"{i.spearman.get(m, float('nan')):.2f}" for m in methods)
        lines.append(
            f"| {i.name} | {i.label} | {i.probability:.2f} | {areas} "
            f"| {i.auc['random']:.3f} | {rho} |"
        )
    return lines


def to_markdown(
    report: dict[str, Any], results: list[ModelResult], figures: list[str], folder: str
) -> str:
    """The block between the markers of docs/explain.md: how it was measured, the tables,
    the figures (``folder``: where they are, relative to the document)."""
    two = report["two_objects"]
    labels = list(next(iter(two.values()))) if two else []
    lines = [
        f"Measured by `{report['command']}` on {report['date'][:10]} ({report['machine']}, "
        f"ONNX Runtime {report['onnxruntime']}, {report['threads']}) in "
        f"{report['wall_s'] / 60:.1f} minutes; {report['orders']} random orders per image, "
        f"seed {report['seed']}.",
        "",
        "**Deletion** (lower AUC: the target's probability falls sooner; target: below random "
        f"on at least {BEATS_RANDOM_TARGET:.0%} of the images):",
        "",
        *_deletion_table(results),
        "",
        "**Model randomisation** (Spearman's &rho; between the per-pixel maps of the model and of "
        f"its copy with re-initialised weights, same target; target: mean below {SPEARMAN_TARGET}; "
        "undefined: a map without any ranking, all values equal):",
        "",
        *_randomisation_table(results),
        "",
    ]
    if any(ceiling_summary(r) for r in results):
        lines += [
            "**What would move occlusion's deletion AUC** (on the first images of each model: "
            "occlusion as served, with the defaults and the drop in the target's probability; "
            "at the finest window a request may ask for, the same at a stride of itself: "
            "`window=1&stride=1` at 28x28, `window=7&stride=7` at 224x224; and with the drop "
            "in the target's log-odds, which the service does not offer):",
            "",
            *_ceiling_table(results),
            "",
        ]
    for r in results:
        if not r.truth:
            lines += [f"**Each photo** (`{r.model}`):", "", *_per_image_table(r), ""]
    if two:
        lines += [
            "**Two objects** (tests/service/test_explain.py's canvas: cat left, cup right; the "
            "share of each map's mass on its object's half; the test asks for more than 60 %):",
            "",
            "| method | " + " | ".join(f'"{label}"' for label in labels) + " |",
            "|---|" + "--:|" * len(labels),
            *(
                f"| {m} | " + " | ".join(f"{masses[t]:.0%}" for t in labels) + " |"
                for m, masses in two.items()
            ),
            "",
        ]
    lines += [f"![{Path(f).stem}]({folder}/{f})" for f in figures]
    return "\n".join(lines)


def write_block(doc: Path, block: str) -> None:
    """Put ``block`` between the markers of ``doc`` (a new file: only the markers)."""
    text = doc.read_text() if doc.is_file() else f"{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    doc.write_text(pattern.sub(lambda _: f"{START}\n{block}\n{END}", text))
