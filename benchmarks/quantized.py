"""``python -m benchmarks.quantized``: in-process latency per image, FP32 against INT8.

For every model of the repository with an INT8 version (``cnnserve quantize``), its FP32
source and its INT8 version run side by side on one core and one ONNX Runtime thread, on
real inputs (Fashion-MNIST test images, or the shipped photographs), at batch 1 and 32. The
two are timed in turn, round after round, so that other load on the machine hits both
alike; the medians and their ratio are reported. No HTTP, no preprocessing: the model alone.
It prints a Markdown table and writes JSON (default ``benchmarks/results/quantized.json``).

    python -m benchmarks.quantized --model-dir models --rounds 100 --rounds-batch32 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.inputs import REPO
from model_export.quantize_measure import cpu_facts, interleaved_latency
from service.model_card import INT8, ModelCard

__all__ = ["measure", "pairs"]

OUTPUT = REPO / "benchmarks" / "results" / "quantized.json"


def pairs(model_dir: Path) -> list[tuple[str, str, str]]:
    """(model, FP32 version, INT8 version) for every INT8 version in ``model_dir``."""
    found = []
    for card_path in sorted(model_dir.glob("*/model.json")):
        card = ModelCard.model_validate_json(card_path.read_text())
        for version in sorted(card.versions, key=int):
            facts = card.version_facts(version)
            if facts.precision == INT8 and (card_path.parent / version).is_dir():
                found.append((card.name, str(getattr(facts, "source_version", "1")), version))
    return found


def _inputs(card: dict[str, Any]) -> np.ndarray:
    """32 real inputs, preprocessed as the server would."""
    from service.model_card import InputSpec

    spec = InputSpec.model_validate(card["input"])
    if card.get("dataset") == "fashion-mnist":
        from model_export.datasets import load_fashion_mnist

        images = load_fashion_mnist().test.images[:32].astype(np.float32) / 255.0
        return ((images - spec.mean[0]) / spec.std[0])[:, None].astype(np.float32)
    from model_export.quantize_data import photo_images

    return photo_images(spec, views=2).inputs[:32]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(
    model_dir: Path, *, rounds: int, rounds_batch32: int, models: list[str] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for name, fp32, int8 in pairs(model_dir):
        if models and name not in models:
            continue
        card = json.loads((model_dir / name / "model.json").read_text())
        paths: dict[str, Path | bytes] = {
            "fp32": model_dir / name / fp32 / "model.onnx",
            "int8": model_dir / name / int8 / "model.onnx",
        }
        sample = _inputs(card)
        load_before = _load()
        timed = interleaved_latency(paths, sample, batches=(1,), rounds=rounds, warmup=10)
        timed32 = interleaved_latency(paths, sample, batches=(32,), rounds=rounds_batch32)
        variant = card["versions"][int8]["quantization"]["variant"]
        for batch, by_model in ((1, timed), (32, timed32)):
            row = {
                "model": name,
                "fp32_version": fp32,
                "int8_version": int8,
                "variant": variant,
                "batch": batch,
                "fp32_ms_per_image": round(by_model["fp32"][batch], 4),
                "int8_ms_per_image": round(by_model["int8"][batch], 4),
                "speedup": round(by_model["fp32"][batch] / by_model["int8"][batch], 2),
                "rounds": rounds if batch == 1 else rounds_batch32,
                "load_average_before": load_before,
                "load_average_after": _load(),
            }
            rows.append(row)
            print(
                f"{name:24} batch {batch:<3} FP32 {row['fp32_ms_per_image']:8.3f} ms  "
                f"INT8 {row['int8_ms_per_image']:8.3f} ms  {row['speedup']:.2f}x  "
                f"load {row['load_average_after'][0]}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | variant | batch | FP32 ms / image | INT8 ms / image | INT8 speed-up |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['variant']} | {r['batch']} | {r['fp32_ms_per_image']:.3f} "
            f"| {r['int8_ms_per_image']:.3f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", action="append", help="only these models (repeat)")
    parser.add_argument("--rounds", type=int, default=100, help="timed runs at batch 1")
    parser.add_argument("--rounds-batch32", type=int, default=20, help="timed runs at batch 32")
    parser.add_argument("--core", type=int, default=0, help="the one core to run on")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    rows = measure(
        args.model_dir, rounds=args.rounds, rounds_batch32=args.rounds_batch32, models=args.model
    )
    if not rows:
        raise SystemExit(f"no INT8 version in {args.model_dir}: run `cnnserve quantize` first")
    result = {
        "what": "in-process ONNX Runtime latency per image, FP32 vs INT8, one core, one thread, "
        "timed in turn, medians",
        "measured_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "core": args.core,
        "machine": cpu_facts() | {"cores": os.cpu_count()},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
