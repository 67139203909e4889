"""The in-process limit: ONNX Runtime alone, with decoding and preprocessing included.

No HTTP, no queue, no threads: one loop that decodes the benchmark PNG with the service's
own ``preprocess``, runs the model and takes the top 5, as fast as one core allows. Batch 1
is the per-image cost; the best of the larger batches is what batching can reach at most.
Run it pinned (``taskset -c 0``) like the servers; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.inputs import REPO, image_path
from service.model_card import load_card
from service.preprocessing import preprocess

__all__ = ["measure"]

BATCHES = (1, 8, 16, 32, 64)


def _session(model: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    path = REPO / "models" / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _top5(logits: np.ndarray) -> np.ndarray:
    return np.argpartition(-logits, 5, axis=-1)[:, :5]


def _rate(model: str, batch: int, seconds: float, threads: int) -> dict[str, float]:
    """Images per second for ``batch`` images per call, decode and preprocess included."""
    session = _session(model, threads)
    spec = load_card(REPO / "models" / model / "model.json").input
    data = Path(image_path(model)).read_bytes()
    name = session.get_inputs()[0].name

    def once() -> None:
        tensors = [preprocess(data, spec, max_pixels=40_000_000) for _ in range(batch)]
        _top5(session.run(None, {name: np.stack(tensors)})[0])

    for _ in range(3):
        once()
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < seconds:
        once()
        calls += 1
    cpu = time.process_time() - cpu_started
    return {
        "batch": batch,
        "images_per_s": round(calls * batch / elapsed, 1),
        "images_per_cpu_s": round(calls * batch / cpu, 1),
        "cpu_share": round(cpu / elapsed, 2),
        "ms_per_call": round(elapsed / calls * 1000, 3),
    }


def measure(model: str, *, seconds: float, threads: int = 1) -> dict[str, object]:
    rows = [_rate(model, b, seconds, threads) for b in BATCHES]
    best = max(rows, key=lambda r: r["images_per_s"])
    best_cpu = max(rows, key=lambda r: r["images_per_cpu_s"])
    return {
        "model": model,
        "threads": threads,
        "cores": sorted(os.sched_getaffinity(0)),
        "batch1_images_per_s": rows[0]["images_per_s"],
        "batch1_images_per_cpu_s": rows[0]["images_per_cpu_s"],
        "best_batch": best["batch"],
        "best_images_per_s": best["images_per_s"],
        "best_cpu_batch": best_cpu["batch"],
        "best_images_per_cpu_s": best_cpu["images_per_cpu_s"],
        "by_batch": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    json.dump(measure(args.model, seconds=args.seconds, threads=args.threads), sys.stdout)
    print()


if __name__ == "__main__":
    main()
