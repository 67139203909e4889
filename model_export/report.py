"""`make models-report`: accuracy, size and CPU latency of the committed models, measured.

One row per version: FP32 versions and the INT8 versions `cnnserve quantize` wrote beside
them (their precision comes from model.json's ``"versions"``). Accuracy is recomputed by ONNX
Runtime from the ONNX files on the full 10k Fashion-MNIST test set; latency is per image on
one CPU thread, the median of runs at batch 1 and at batch 32, the versions of a model timed
in turn. The Markdown table is printed, and written between the ``models-report`` markers of
the README when asked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_export.datasets import Split, load_dataset
from model_export.quantize_measure import interleaved_latency
from model_export.repository import precision

__all__ = ["fashion_accuracy", "main", "measure"]

START, END = "<!-- models-report:start -->", "<!-- models-report:end -->"


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fashion_accuracy(
    model_path: Path, mean: float, std: float, *, batch: int = 1000, limit: int | None = None
) -> float:
    """Top-1 accuracy of an ONNX model on the official 10k Fashion-MNIST test set (its first
    ``limit`` images only, for a quick check)."""
    data = load_dataset("fashion-mnist").test
    if limit is not None:
        data = Split(data.images[:limit], data.labels[:limit])
    session = _session(model_path)
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(data), batch):
        images = data.images[start : start + batch].astype(np.float32) / 255.0
        x = ((images - mean) / std)[:, None].astype(np.float32)
        logits = session.run(None, {name: x})[0]
        correct += int((logits.argmax(1) == data.labels[start : start + batch]).sum())
    return correct / len(data)


def _latencies(
    paths: dict[str, Path], shape: list[int], *, runs: int, runs_batch32: int
) -> dict[str, dict[int, float]]:
    """Milliseconds per image of each version at batch 1 and 32, the versions in turn."""
    sample = np.random.default_rng(0).standard_normal([32, *shape]).astype(np.float32)
    models: dict[str, Path | bytes] = dict(paths)
    one = interleaved_latency(models, sample, batches=(1,), rounds=runs, warmup=10)
    many = interleaved_latency(models, sample, batches=(32,), rounds=runs_batch32)
    return {version: one[version] | many[version] for version in paths}


def measure(
    model_dir: Path, *, runs: int = 200, runs_batch32: int = 25, test_images: int | None = None
) -> list[dict[str, object]]:
    """A row per model version: precision, size, accuracy on the Fashion-MNIST test set
    (its first ``test_images``; default all 10k), latency at batch 1 and 32."""
    rows = []
    for card_path in sorted(model_dir.glob("*/model.json")):
        card = json.loads(card_path.read_text())
        versions = sorted((p.name for p in card_path.parent.iterdir() if p.name.isdigit()), key=int)
        paths = {v: card_path.parent / v / "model.onnx" for v in versions}
        spec = card["input"]
        channels = 1 if spec["color_mode"] == "L" else 3
        latency = _latencies(paths, [channels, *spec["size"]], runs=runs, runs_batch32=runs_batch32)
        for version, onnx_path in paths.items():
            ece = card.get("versions", {}).get(version, {}).get("calibration", {}).get("ece", {})
            accuracy = None
            if card.get("dataset") == "fashion-mnist":
                accuracy = fashion_accuracy(
                    onnx_path, spec["mean"][0], spec["std"][0], limit=test_images
                )
            rows.append(
                {
                    "name": card["name"],
                    "version": version,
                    "precision": precision(card, version),
                    "architecture": card.get("architecture"),
                    "dataset": card.get("dataset"),
                    "test_accuracy": accuracy,
                    "parameters": card.get("parameters"),
                    "onnx_bytes": onnx_path.stat().st_size,
                    "cpu_ms_per_image": latency[version][1],
                    "cpu_ms_per_image_batch32": latency[version][32],
                    "ece_test": ece.get("test"),  # {"before": raw softmax, "after": calibrated}
                }
            )
    return rows


def _size(onnx_bytes: int) -> str:
    kib = onnx_bytes / 1024
    return f"{kib:.0f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def _ece(figures: dict[str, float] | None) -> str:
    if not figures:
        return "—"
    return f"{figures['before']:.3f} → {figures['after']:.3f}"


def to_markdown(rows: list[dict[str, Any]], *, load: float | None = None) -> str:
    """The table and how it was measured. Any model the repository can hold has a row:
    a figure model.json lacks (parameters of an imported model, a calibration) is "—"."""
    lines = [
        "| model | version | precision | dataset | test accuracy (10k, ONNX Runtime) "
        "| ECE (test): softmax → calibrated | parameters | ONNX size "
        "| CPU latency / image, batch 1 | batch 32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "—"
        parameters = f"{r['parameters']:,}" if isinstance(r["parameters"], int) else "—"
        lines.append(
            f"| `{r['name']}` | {r['version']} | {str(r['precision']).upper()} "
            f"| {r['dataset'] or '—'} | {accuracy} | {_ece(r.get('ece_test'))} | {parameters} "
            f"| {_size(r['onnx_bytes'])} | {r['cpu_ms_per_image']:.2f} ms "
            f"| {r['cpu_ms_per_image_batch32']:.2f} ms |"
        )
    lines.append("")
    where = f"{platform.processor() or platform.machine()} ({platform.system()})"
    quiet = f", load average {load:.1f} when it started" if load is not None else ""
    lines.append(
        f"Measured by `make models-report` on {where}{quiet}, ONNX Runtime {ort.__version__}, "
        "one CPU thread, median of 200 runs at batch 1 and 25 at batch 32, the versions of a "
        "model timed in turn; on a busy machine latencies rise (run it on a quiet one). ECE: "
        "expected calibration error over 15 bins on the test set, with the raw softmax and with "
        "the temperature the service applies (`cnnserve calibrate`, docs/trust.md). INT8 "
        "versions come from `cnnserve quantize` (static QDQ quantization; how, and what it was "
        "measured to cost, in the model's model.json under `versions`)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--readme", type=Path, help="update the table in this file")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = measure(args.model_dir)
    table = to_markdown(rows, load=load)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.readme:
        text = args.readme.read_text()
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{args.readme} has no {START} ... {END} markers")
        args.readme.write_text(pattern.sub(f"{START}\n{table}\n{END}", text))


if __name__ == "__main__":
    main()
