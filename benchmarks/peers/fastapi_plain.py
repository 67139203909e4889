"""A plain FastAPI + ONNX Runtime server, written the way the FastAPI docs teach.

The model is loaded in ``lifespan`` ("Lifespan Events": the ML-model example), uploads are
``list[UploadFile]`` ("Request Files"), and each request runs the model once, inline, on
the images it brought: no queue, no batching across requests. Preprocessing is cnnserve's
own ``preprocess`` so that the comparison is of the serving path, not of image code.

    python -m benchmarks.peers.fastapi_plain MODEL_DIR/NAME --port 8001 [--workers N]

Like every server in the benchmark, ONNX Runtime gets one intra-op thread per core this
process may run on, divided among the workers (a generous default: ORT's own would
oversubscribe a pinned core).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, UploadFile

from service.model_card import load_card
from service.preprocessing import preprocess

ml: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    model_dir = Path(os.environ["PLAIN_MODEL_DIR"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("PLAIN_THREADS", "1"))
    ml["session"] = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    ml["card"] = load_card(model_dir / "model.json")
    yield
    ml.clear()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
async def predict(file: list[UploadFile]) -> dict[str, Any]:
    card = ml["card"]
    batch = np.stack([preprocess(await f.read(), card.input, max_pixels=40_000_000) for f in file])
    logits = ml["session"].run(None, {"input": batch})[0]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    results = []
    for f, row in zip(file, probabilities, strict=True):
        top = np.argsort(-row)[:5]
        results.append(
            {
                "filename": f.filename,
                "predictions": [
                    {"index": int(i), "label": card.labels[i], "probability": float(row[i])}
                    for i in top
                ],
            }
        )
    return {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description="plain FastAPI + ONNX Runtime")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    os.environ["PLAIN_MODEL_DIR"] = str(args.model_dir.resolve())
    os.environ["PLAIN_THREADS"] = str(max(1, cores // args.workers))
    uvicorn.run(
        "benchmarks.peers.fastapi_plain:app" if args.workers > 1 else app,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
