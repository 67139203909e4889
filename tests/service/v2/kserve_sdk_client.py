"""KServe's own Python SDK against a live server: the calls that test_kserve_sdk.py checks.

Runs in .venv-kserve, where kserve is installed (it is not in the dev environment):

    python kserve_sdk_client.py http://127.0.0.1:PORT TENSORS_DIR

``TENSORS_DIR`` holds one FP32 NCHW batch per model, as ``<model name>.npy``. Every call goes
through ``kserve.InferenceRESTClient`` with protocol v2, and the script prints one JSON object
with what each call returned, plus, for each inference, the headers that went out and came
back (so the test sees which encoding really travelled). It judges nothing itself.

How kserve 0.21 picks the encoding: ``InferInput.set_data_from_numpy(binary_data=True)``
keeps the tensor as raw bytes, and ``InferRequest.to_rest`` then sends the JSON header followed
by those bytes as ``application/octet-stream`` with ``Inference-Header-Content-Length``;
``binary_data=False`` puts the values in the JSON. Outputs come back binary when the request's
``binary_data_output`` parameter is true, else as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import kserve
import numpy as np

HEADER_LENGTH = "inference-header-content-length"
INPUT = "input"  # the input tensor of every model in models/ (model.json "input.name")
UNKNOWN_MODEL = "no-such-model"
# Encoding name -> (inputs as binary data, outputs as binary data).
ENCODINGS = {"json": (False, False), "binary": (True, True), "binary-input": (True, False)}
# A tensor of the wrong shape for lenet5-fashion, to see how an error reaches the SDK.
WRONG_SHAPE = (2, 3)


class RecordingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, noting the headers of every request and of its response."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[dict[str, dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self.exchanges.append(
            {"request": _framing(request.headers), "response": _framing(response.headers)}
        )
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _framing(headers: httpx.Headers) -> dict[str, Any]:
    length = headers.get(HEADER_LENGTH)
    return {
        "content_type": headers.get("content-type"),
        "header_length": None if length is None else int(length),
    }


async def _infer(
    client: kserve.InferenceRESTClient,
    transport: RecordingTransport,
    url: str,
    model: str,
    batch: np.ndarray,
    encoding: str,
) -> dict[str, Any]:
    binary_inputs, binary_outputs = ENCODINGS[encoding]
    tensor = kserve.InferInput(INPUT, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary_inputs)
    request = kserve.InferRequest(
        model,
        [tensor],
        request_id=f"kserve-{model}-{encoding}",
        parameters={"binary_data_output": True} if binary_outputs else None,
    )
    response = await client.infer(url, request, model_name=model)
    return {
        "model_name": response.model_name,
        "id": response.id,
        "outputs": [
            {
                "name": output.name,
                "datatype": output.datatype,
                "shape": list(output.shape),
                "data": output.as_numpy().tolist(),
            }
            for output in response.outputs
        ],
        **transport.exchanges[-1],
    }


async def _error(client: kserve.InferenceRESTClient, url: str, model: str) -> dict[str, Any]:
    tensor = kserve.InferInput(INPUT, list(WRONG_SHAPE), "FP32")
    tensor.set_data_from_numpy(np.zeros(WRONG_SHAPE, dtype=np.float32), binary_data=False)
    try:
        await client.infer(url, kserve.InferRequest(model, [tensor]), model_name=model)
    except httpx.HTTPStatusError as exc:
        return {"status": exc.response.status_code, "message": str(exc)}
    return {"status": None, "message": "the request was accepted"}


async def run(url: str, batches: dict[str, np.ndarray]) -> dict[str, Any]:
    transport = RecordingTransport()
    config = kserve.RESTConfig(transport=transport, protocol="v2", timeout=120)
    async with kserve.InferenceRESTClient(config) as client:
        return {
            "server_live": await client.is_server_live(url),
            "server_ready": await client.is_server_ready(url),
            "model_ready": {
                name: await client.is_model_ready(url, name) for name in [*batches, UNKNOWN_MODEL]
            },
            "infer": {
                model: {
                    encoding: await _infer(client, transport, url, model, batch, encoding)
                    for encoding in ENCODINGS
                }
                for model, batch in batches.items()
            },
            "error": await _error(client, url, "lenet5-fashion"),
        }


def main() -> None:
    url, tensors = sys.argv[1], Path(sys.argv[2])
    batches = {path.stem: np.load(path) for path in sorted(tensors.glob("*.npy"))}
    print(json.dumps(asyncio.run(run(url, batches))))


if __name__ == "__main__":
    main()
