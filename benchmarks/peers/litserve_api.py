"""LitServe with its dynamic batching, as its docs teach: a LitAPI with setup, decode_request,
batch, predict, unbatch and encode_response, served by ``LitServer``.

Requests arrive as multipart (field ``file``, one image each); LitServe's API process parses
the form and ships it to the inference worker, which decodes (cnnserve's ``preprocess``, so
image code is the same), batches up to ``--max-batch-size`` requests waiting at most
``--batch-timeout`` seconds (cnnserve's defaults: 32 and 2 ms), runs ONNX Runtime once per
batch and answers each request with its top 5.

    python -m benchmarks.peers.litserve_api MODEL_DIR/NAME --port 8002 [--workers N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort

from service.model_card import load_card
from service.preprocessing import preprocess


class OnnxClassifier(ls.LitAPI):
    def __init__(self, model_dir: Path, threads: int, **options: Any) -> None:
        super().__init__(**options)
        self.model_dir = model_dir
        self.threads = threads

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(
            str(self.model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.card = load_card(self.model_dir / "model.json")

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the
        # (absent) annotation: none means "the Starlette Request", parsed as a form.
        upload = request["file"]
        return preprocess(upload.file.read(), self.card.input, max_pixels=40_000_000)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"input": x})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        top = np.argsort(-output)[:5]
        return {
            "predictions": [
                {"index": int(i), "label": self.card.labels[i], "probability": float(output[i])}
                for i in top
            ]
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="LitServe + ONNX Runtime, batched")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=1, help="inference workers (processes)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    api = OnnxClassifier(
        args.model_dir.resolve(),
        max(1, cores // args.workers),
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.workers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
