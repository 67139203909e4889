"""Broken and changing model files, with a real server process.

At start: a corrupt model.onnx, a missing one, an invalid model.json and a model.json that
does not match its graph each make that model unavailable with its reason; the others serve.
While serving: model files replaced, half-written, added and removed, each followed by the
repository API's load, while a load generator runs on /v1 and /v2: no request fails.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import numpy_helper
from reliability_kit import TIMEOUT, Call, LoadGenerator, Summary, native_error, v2_error
from testkit import ServerFactory, png

from model_export.datasets import Split

pytestmark = pytest.mark.slow

ADMIN_KEY = "faults-admin-key"  # CNNSERVE_ADMIN_KEYS of the servers that reload models


def _classify(url: str, model: str, image: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{model}/classify",
        content=image,
        headers={"Content-Type": "image/png"},
        timeout=TIMEOUT,
    )


def _retrained(graph: bytes) -> bytes:
    """``graph`` with its first convolution's bias moved: another training run's file."""
    model = onnx.load_from_string(graph)
    bias = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 1)
    values = numpy_helper.to_array(bias) + np.float32(0.01)
    bias.CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias.name))
    return model.SerializeToString()


def test_broken_models_at_start_are_unavailable_with_reasons_and_the_rest_serve(
    start_server: ServerFactory, model_repo: Path, fashion_test: Split, summary: Summary
) -> None:
    for path in (model_repo / "vggnet-fashion").glob("*/model.onnx"):  # every version
        path.write_bytes(b"\x08\x07not a graph")
    for path in (model_repo / "resnet-fashion").glob("*/model.onnx"):
        path.unlink()
    shutil.copytree(model_repo / "lenet5-fashion", model_repo / "bad-card")
    (model_repo / "bad-card" / "model.json").write_text('{"name": "bad-card", "labels": [')
    shutil.copytree(model_repo / "lenet5-fashion", model_repo / "wrong-labels")
    card = json.loads((model_repo / "wrong-labels" / "model.json").read_text())
    (model_repo / "wrong-labels" / "model.json").write_text(
        json.dumps(card | {"labels": card["labels"][:3]})
    )
    server = start_server(model_dir=model_repo)

    ready = httpx.get(f"{server.url}/health/ready", timeout=TIMEOUT)
    assert ready.status_code == 200, ready.text
    models = {m["name"]: m for m in ready.json()["models"]}
    reasons = {
        "vggnet-fashion": "not a loadable ONNX model",
        "resnet-fashion": "model.onnx",
        "bad-card": "not valid JSON",
        "wrong-labels": "labels",
    }
    image = png(fashion_test.images[0])
    for name, fragment in reasons.items():
        assert models[name]["state"] == "unavailable", models[name]
        assert fragment in (models[name]["reason"] or ""), models[name]
        refused = _classify(server.url, name, image)
        assert refused.status_code == 503, refused.text
        assert native_error(refused)["code"] == "model_unavailable"
        v2_ready = httpx.get(f"{server.url}/v2/models/{name}/ready", timeout=TIMEOUT)
        assert v2_ready.status_code == 400 and v2_ready.json()["ready"] is False
    for name in ("lenet5-fashion", "mobilenetv2-imagenet"):
        assert models[name]["state"] == "ready"
        assert _classify(server.url, name, image).status_code == 200
    assert server.log().count("Traceback") == 0
    summary.row(
        "faults/broken-at-start",
        area="faults",
        tried="start with a corrupt model.onnx, a missing one, an invalid model.json and "
        "labels that do not match the graph",
        held=True,
        broken_models=len(reasons),
        serving_models=2,
    )


def _v2_body(images: np.ndarray) -> bytes:
    batch = (images.astype(np.float32)[:, None] / 255.0 - 0.2863) / 0.3532
    tensor = {"name": "input", "shape": list(batch.shape), "datatype": "FP32"}
    return orjson.dumps(
        {"inputs": [tensor | {"data": batch.ravel()}]}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def _load(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v2/repository/models/{model}/load",
        headers={"X-API-Key": ADMIN_KEY},
        timeout=httpx.Timeout(120),
    )


def _replace(path: Path, data: bytes) -> None:
    """Write a new file next to ``path`` and rename it over: what a careful deploy does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def test_model_files_change_under_load_and_no_request_fails(
    start_server: ServerFactory, model_repo: Path, fashion_test: Split, summary: Summary
) -> None:
    server = start_server(model_dir=model_repo, admin_keys=ADMIN_KEY)
    model = model_repo / "lenet5-fashion"
    calls = [
        Call(
            "classify",
            "POST",
            "/v1/models/lenet5-fashion/classify",
            png(fashion_test.images[3]),
            {"Content-Type": "image/png"},
        ),
        Call("infer", "POST", "/v2/models/lenet5-fashion/infer", _v2_body(fashion_test.images[:4])),
        Call("ready", "GET", "/v2/models/lenet5-fashion/ready"),
    ]
    steps: list[tuple[str, int]] = []
    with LoadGenerator(server.url, calls, concurrency=6) as load:
        time.sleep(0.5)
        # 1. A retrained file (the same graph, other bytes: the card's trust statistics name
        #    its layers) replaces the served one, then a reload.
        served = (model / "1" / "model.onnx").read_bytes()
        _replace(model / "1" / "model.onnx", _retrained(served))
        steps.append(("replaced, then load", _load(server.url, "lenet5-fashion").status_code))
        # 2. A half-written upload: the reload fails and the serving version stays.
        (model / "1" / "model.onnx").write_bytes(b"\x08\x07half a file")
        steps.append(("half-written, then load", _load(server.url, "lenet5-fashion").status_code))
        # 3. A new version appears, then a reload: it takes over.
        (model / "2").mkdir()
        shutil.copy(model_repo / "vggnet-fashion/1/model.onnx", model / "2" / "model.onnx")
        steps.append(
            ("version 2 added, then load", _load(server.url, "lenet5-fashion").status_code)
        )
        # 4. The serving version's folder is removed, then a reload: version 1 is still bad,
        #    so the reload fails and version 2 keeps serving from memory.
        shutil.rmtree(model / "2")
        steps.append(
            ("version 2 removed, then load", _load(server.url, "lenet5-fashion").status_code)
        )
        # 5. Every file removed, no reload: the sessions in memory keep serving.
        for path in model.rglob("*.onnx"):
            path.unlink()
        time.sleep(0.5)
        # 6. The good file comes back, then a reload.
        (model / "1" / "model.onnx").write_bytes(served)
        steps.append(("restored, then load", _load(server.url, "lenet5-fashion").status_code))
        time.sleep(0.5)
    outcomes = load.outcomes
    failed = [o for o in outcomes if o.status != 200]
    summary.row(
        "faults/files-change-under-load",
        area="faults",
        tried="model.onnx replaced, half-written, a version added and removed, every file "
        "deleted, each with POST /v2/repository/models/{m}/load, under 6 concurrent clients",
        held=not failed and len(outcomes) > 50,
        requests=len(outcomes),
        failed=len(failed),
        loads=len(steps),
    )
    assert [status for _, status in steps] == [200, 400, 200, 400, 200], steps
    assert len(outcomes) > 50, f"only {len(outcomes)} requests ran"
    assert not failed, failed[:5]
    assert server.log().count("Traceback") == 0
    # The last reload serves version 1 again (the folder of version 2 is gone).
    info = httpx.get(f"{server.url}/v1/models/lenet5-fashion", timeout=TIMEOUT).json()
    assert info["versions"] == ["1"] and info["state"] == "ready"


def test_a_load_of_a_model_that_never_existed_is_a_404_with_the_v2_shape(
    start_server: ServerFactory, model_repo: Path
) -> None:
    server = start_server(model_dir=model_repo, admin_keys=ADMIN_KEY)
    response = _load(server.url, "ghost")
    assert response.status_code == 404 and "ghost" in v2_error(response)
