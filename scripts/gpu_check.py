"""The checks that need a GPU: run on a CUDA machine with onnxruntime-gpu installed.

For each provider mode (auto, cuda, cpu) it builds the real app, loads the committed models,
and records where ONNX Runtime placed each one; it classifies the bundled photos on CUDA and
on the CPU and compares the probabilities; it times MobileNetV2 inference on both. Prints a
JSON report (and writes it to the path given).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if os.environ.get("GPU_CHECK_IMPORT_TORCH") == "1":  # torch's bundled CUDA libraries
    import torch  # noqa: F401

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient

from model_export.photos import photo_paths
from service.app import create_app
from service.config import Settings


def _classify(client: TestClient, photos: dict[str, bytes]) -> dict[str, dict[str, float]]:
    files = [("file", (name, data, "application/octet-stream")) for name, data in photos.items()]
    body = client.post("/v1/models/mobilenetv2-imagenet/classify?top_k=5", files=files).json()
    return {
        r["filename"]: {p["label"]: p["probability"] for p in r["predictions"]}
        for r in body["results"]
    }


def _time_batch(client: TestClient, batch: int, runs: int = 20) -> float:
    state = client.app.state.cnnserve  # type: ignore[attr-defined]
    runtime = state.repository.get("mobilenetv2-imagenet").runtime
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(3):
        runtime.infer(x)
    started = time.perf_counter()
    for _ in range(runs):
        runtime.infer(x)
    return (time.perf_counter() - started) / runs


def main() -> None:
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
    }
    photos = {name: path.read_bytes() for name, path in photo_paths().items()}
    results = {}
    for mode in ("auto", "cuda", "cpu"):
        settings = Settings(providers=mode, model_dir=Path("models"))  # type: ignore[arg-type]
        with TestClient(create_app(settings)) as client:
            ready = client.get("/health/ready")
            entry: dict[str, object] = {
                "ready_status": ready.status_code,
                "models": {
                    m["name"]: {
                        "providers": m["providers"],
                        "state": m["state"],
                        "reason": m["reason"] or m["fallback_reason"],
                    }
                    for m in ready.json()["models"]
                },
            }
            if ready.status_code == 200:
                entry["top5"] = _classify(client, photos)
                entry["ms_per_batch"] = {
                    str(b): round(_time_batch(client, b) * 1000, 2) for b in (1, 32)
                }
            results[mode] = entry
    report["modes"] = results
    cuda, cpu = results["cuda"].get("top5"), results["cpu"].get("top5")
    if isinstance(cuda, dict) and isinstance(cpu, dict):
        report["max_probability_difference_cuda_vs_cpu"] = max(
            abs(cuda[f][label] - cpu[f].get(label, 0.0)) for f in cuda for label in cuda[f]
        )
        report["same_top1"] = all(next(iter(cuda[f])) == next(iter(cpu[f])) for f in cuda)
    text = json.dumps(report, indent=2)
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text + "\n")


if __name__ == "__main__":
    main()
