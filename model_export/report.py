"""`make models-report`: accuracy, size and CPU latency of the committed models, measured.

Accuracy is recomputed by ONNX Runtime from the ONNX files on the full 10k Fashion-MNIST
test set; latency is the median of single-image runs on one CPU thread. The Markdown table
is printed, and written between the ``models-report`` markers of the README when asked.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.datasets import load_dataset

__all__ = ["fashion_accuracy", "main", "measure"]

START, END = "<!-- models-report:start -->", "<!-- models-report:end -->"


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fashion_accuracy(model_path: Path, mean: float, std: float, *, batch: int = 1000) -> float:
    """Top-1 accuracy of an ONNX model on the official 10k Fashion-MNIST test set."""
    data = load_dataset("fashion-mnist").test
    session = _session(model_path)
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(data), batch):
        images = data.images[start : start + batch].astype(np.float32) / 255.0
        x = ((images - mean) / std)[:, None].astype(np.float32)
        logits = session.run(None, {name: x})[0]
        correct += int((logits.argmax(1) == data.labels[start : start + batch]).sum())
    return correct / len(data)


def _latency_ms(session: ort.InferenceSession, shape: list[int], runs: int) -> float:
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal([1, *shape]).astype(np.float32)
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure(model_dir: Path, *, runs: int = 200) -> list[dict[str, object]]:
    rows = []
    for card_path in sorted(model_dir.glob("*/model.json")):
        card = json.loads(card_path.read_text())
        versions = sorted(
            (p for p in card_path.parent.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        onnx_path = versions[-1] / "model.onnx"
        spec = card["input"]
        channels = 1 if spec["color_mode"] == "L" else 3
        accuracy = None
        if card.get("dataset") == "fashion-mnist":
            accuracy = fashion_accuracy(onnx_path, spec["mean"][0], spec["std"][0])
        rows.append(
            {
                "name": card["name"],
                "version": versions[-1].name,
                "architecture": card.get("architecture"),
                "dataset": card.get("dataset"),
                "test_accuracy": accuracy,
                "parameters": card.get("parameters"),
                "onnx_bytes": onnx_path.stat().st_size,
                "cpu_ms_per_image": _latency_ms(
                    _session(onnx_path), [channels, *spec["size"]], runs
                ),
            }
        )
    return rows


def to_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | dataset | test accuracy (10k, ONNX Runtime) | parameters | ONNX size "
        "| CPU latency / image |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "—"
        size_kib = int(r["onnx_bytes"]) / 1024  # type: ignore[call-overload]
        size = f"{size_kib:.0f} KiB" if size_kib < 1024 else f"{size_kib / 1024:.1f} MiB"
        lines.append(
            f"| `{r['name']}` | {r['dataset']} | {accuracy} | {r['parameters']:,} "
            f"| {size} | {r['cpu_ms_per_image']:.2f} ms |"
        )
    lines.append("")
    lines.append(
        f"Measured by `make models-report` on {platform.processor() or platform.machine()}"
        f" ({platform.system()}), ONNX Runtime {ort.__version__}, one CPU thread, "
        "batch 1, median of 200 runs."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--readme", type=Path, help="update the table in this file")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.model_dir)
    table = to_markdown(rows)
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
