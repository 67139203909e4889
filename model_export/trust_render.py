"""The trust report's Markdown tables and pictures (reliability diagrams, score histograms)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["render_markdown", "render_pictures"]

RELIABILITY_PNG = "trust-reliability.png"
SCORES_PNG = "trust-ood-scores.png"


def _method_label(method: str, model: Mapping[str, Any]) -> str:
    if method == "msp":
        return "max softmax probability (baseline)"
    if method == "energy":
        return "energy, T = 1"
    if method == "mahalanobis":
        return f"Mahalanobis, {' + '.join(model['layers'])} (standardised sum)"
    if method == "reference":
        return f"Mahalanobis, {model['reference_layer']} (last layer's input, Lee et al.)"
    if method == "combined":
        return f"**default flag** ({model['methods'].replace('+', ' or ')})"
    return f"Mahalanobis, {method.split(':', 1)[1]} alone"


def _calibration_table(models: list[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| model | T | ECE val, before → after | ECE test, before → after | target (test) |",
        "|---|---|---|---|---|",
    ]
    for m in models:
        c = m["calibration"]
        met = "met" if c["test"]["after"] <= 0.015 else "**not met**"
        lines.append(
            f"| `{m['name']}` | {c['temperature']:.3f} "
            f"| {c['val']['before']:.4f} → {c['val']['after']:.4f} "
            f"| {c['test']['before']:.4f} → {c['test']['after']:.4f} | ≤ 0.015: {met} |"
        )
    return lines


def _ood_table(model: Mapping[str, Any]) -> list[str]:
    methods = model["ood"]["methods"]
    sets = list(next(iter(methods.values())))
    order = ["msp", "energy", "reference"]
    order += [k for k in methods if k.startswith("mahalanobis:")]
    order += ["mahalanobis", "combined"]
    if len(model["layers"]) < 2:
        order.remove("mahalanobis")  # one layer: the same numbers as its own row
    lines = [
        "| method | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for method in (k for k in order if k in methods):
        cells = [
            f"{methods[method][s]['auroc']:.4f} / {methods[method][s]['fpr95']:.3f}" for s in sets
        ]
        lines.append(f"| {_method_label(method, model)} | " + " | ".join(cells) + " |")
    return lines


def _targets_table(models: list[Mapping[str, Any]]) -> list[str]:
    lines = ["| model | target | measured | bar | |", "|---|---|---|---|---|"]
    for m in models:
        for t in m["targets"]:
            value = t["value"]
            shown = (
                ("yes" if value else "no")
                if isinstance(value, bool)
                else f"{value:.4f}"
                if "ECE" in t["target"] or "AUROC" in t["target"]
                else f"{value:.1%}"
            )
            verdict = "met" if t["met"] else "**not met**"
            lines.append(f"| `{m['name']}` | {t['target']} | {shown} | {t['bar']} | {verdict} |")
    return lines


def _least(trial: Mapping[str, Any]) -> str:
    name, rate = min(trial["flag_rates"].items(), key=lambda item: item[1])
    return f"{rate:.1%} ({name})"


def _choice_table(models: list[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| model | Mahalanobis layers (features) | chosen: least flagged selection set "
        "| energy alone | those layers alone | last layer's input alone |",
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        layers = ", ".join(f"`{k}` ({d})" for k, d in m["features"].items())
        single = m["selection"]["single_methods"]
        cells = [_least(t) for t in single] + ["—"] * (3 - len(single))
        lines.append(
            f"| `{m['name']}` | {layers} | {_least(m['selection']['chosen'])} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    models = report["models"]
    lines = ["### Layers chosen at fit time (selection draw, not the benchmark)", ""]
    lines += _choice_table(models)
    lines += [
        "",
        "Each cell: the smallest share flagged over the four selection sets, with 4.5 % of "
        "the validation split flagged.",
        "",
        "### Calibration (temperature scaling, 15-bin ECE)",
        "",
    ]
    lines += _calibration_table(models)
    lines += ["", f"![Reliability diagrams, test set](img/{RELIABILITY_PNG})", ""]
    lines += ["### Out-of-distribution detection: AUROC / FPR at 95 % TPR", ""]
    lines.append(
        "In-distribution: the Fashion-MNIST test set (10,000). Higher AUROC and lower FPR95 "
        "are better."
    )
    for m in models:
        sizes = ", ".join(f"{k} {v:,}" for k, v in m["sets"].items() if k not in ("val",))
        lines += ["", f"#### `{m['name']}` (version {m['version']}; images: {sizes})", ""]
        lines += _ood_table(m)
    lines += ["", "### The default flag against the issue's targets", ""]
    flags = report["models"]
    header = [
        "val",
        "test",
        *[k for k in flags[0]["ood"]["flag_rates"] if k not in ("val", "test")],
    ]
    lines.append("| model | " + " | ".join(f"flagged: {h}" for h in header) + " |")
    lines.append("|---|" + "---|" * len(header))
    for m in flags:
        rates = m["ood"]["flag_rates"]
        lines.append(f"| `{m['name']}` | " + " | ".join(f"{rates[h]:.1%}" for h in header) + " |")
    lines += [""]
    lines += _targets_table(models)
    lines += ["", f"![Default flag scores per set](img/{SCORES_PNG})", ""]
    lines.append(
        f"Measured by `make trust-report` on {report['machine']}: the committed ONNX files, "
        "scored by service.ood exactly as the service scores them."
    )
    return "\n".join(lines)


def _reliability_picture(models: list[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 8), squeeze=False)
    for col, m in enumerate(models):
        test = m["calibration"]["test"]
        for row, when in enumerate(("before", "after")):
            ax = axes[row][col]
            diagram = test[f"diagram_{when}"]
            counts = np.array(diagram["counts"])
            edges = np.linspace(0, 1, len(counts) + 1)
            centres = (edges[:-1] + edges[1:]) / 2
            accuracy = np.array(diagram["accuracy"])
            confidence = np.array(diagram["confidence"])
            filled = counts > 0
            ax.bar(
                centres[filled],
                accuracy[filled],
                width=1 / len(counts),
                color="#4c72b0",
                edgecolor="white",
                label="accuracy",
            )
            ax.bar(
                centres[filled],
                (confidence - accuracy)[filled],
                bottom=accuracy[filled],
                width=1 / len(counts),
                facecolor="none",
                edgecolor="#c44e52",
                hatch="///",
                linewidth=0.8,
                label="gap to mean confidence",
            )
            ax.plot([0, 1], [0, 1], "k--", linewidth=1)
            title = (
                "softmax"
                if when == "before"
                else f"softmax(z / {m['calibration']['temperature']:.2f})"
            )
            ax.set_title(f"{m['name']}: {title}\nECE {test[when]:.4f} (test, 10k)", fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (top-1 probability)")
            if col == 0:
                ax.set_ylabel("accuracy")
            if row == 0 and col == 0:
                ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _scores_picture(models: list[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        scores = m["_combined"]
        low = min(float(np.quantile(s, 0.001)) for s in scores.values())
        high = max(float(np.quantile(s, 0.999)) for s in scores.values())
        bins = np.concatenate([np.linspace(low, 1, 20), np.geomspace(1.0001, max(high, 2), 40)])
        for name, values in scores.items():
            label = "Fashion-MNIST test" if name == "test" else name
            ax.hist(
                np.clip(values, low, high),
                bins=bins,
                histtype="step",
                density=True,
                linewidth=1.5,
                label=label,
            )
        ax.axvline(1.0, color="k", linestyle="--", linewidth=1)
        ax.set_xscale("symlog", linthresh=1.0)
        ticks = [t for t in (-1, 0, 1, 2, 5, 10, 20, 50) if low <= t <= high or t == 1]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_yscale("log")
        ax.set_title(
            f"{m['name']}: default flag score\n(flagged right of the dashed line)", fontsize=10
        )
        ax.set_xlabel("score (1 = threshold)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render_pictures(report: Mapping[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _reliability_picture(report["models"], folder / RELIABILITY_PNG)
    _scores_picture(report["models"], folder / SCORES_PNG)
