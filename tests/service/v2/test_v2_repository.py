"""The model repository extension against a live server: add, replace and remove models
without a restart, with readiness right and no request failing during a swap.

Each test works on its own copy of a model under a new name, so the shared server's
default models are never touched. Every repository call carries the server's admin key as
a header (tritonclient sends its load and unload bodies without a Content-Type, which the
server takes); tests/reliability/test_control_plane.py checks the refusals.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from v2_support import ADMIN, Server, normalise

SOURCE = "lenet5-fashion"


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.host, network_timeout=120.0) as c:
        yield c


def _copy(server: Server, name: str, source: str = SOURCE) -> Path:
    target = server.model_dir / name
    shutil.copytree(server.model_dir / source, target)
    return target


def _index(client: triton.InferenceServerClient) -> dict[tuple[str, str | None], dict[str, str]]:
    rows = client.get_model_repository_index(headers=ADMIN)
    assert isinstance(rows, list)
    return {(row["name"], row.get("version")): row for row in rows}


def _infer(
    client: triton.InferenceServerClient, model: str, x: np.ndarray, version: str = ""
) -> tuple[str, npt.NDArray[np.float32]]:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], model_version=version)
    logits = result.as_numpy("logits")
    assert logits is not None
    return result.get_response()["model_version"], logits


def test_index_lists_every_model_with_its_state(client: triton.InferenceServerClient) -> None:
    index = _index(client)
    for name in ("lenet5-fashion", "vggnet-fashion", "resnet-fashion", "mobilenetv2-imagenet"):
        assert index[(name, "1")] == {"name": name, "version": "1", "state": "READY"}


def test_index_can_list_ready_models_only(http: httpx.Client, server: Server) -> None:
    _copy(server, "never-loaded")
    everything = http.post("/v2/repository/index", headers=ADMIN).json()
    assert {"name": "never-loaded", "state": "UNAVAILABLE", "reason": "not loaded"} in everything
    ready = http.post("/v2/repository/index", json={"ready": True}, headers=ADMIN).json()
    assert ready and all(row["state"] == "READY" for row in ready)
    assert "never-loaded" not in {row["name"] for row in ready}


def test_a_new_model_folder_loads_and_serves(
    client: triton.InferenceServerClient, server: Server, fashion_images: npt.NDArray[np.uint8]
) -> None:
    _copy(server, "lenet-added")
    assert not client.is_model_ready("lenet-added")
    client.load_model("lenet-added", headers=ADMIN)
    assert client.is_model_ready("lenet-added")
    assert _index(client)[("lenet-added", "1")]["state"] == "READY"
    x = normalise(fashion_images[:4], SOURCE)
    _, added = _infer(client, "lenet-added", x)
    _, original = _infer(client, SOURCE, x)
    np.testing.assert_array_equal(added, original)


def test_a_new_version_folder_takes_over(
    client: triton.InferenceServerClient, server: Server, fashion_images: npt.NDArray[np.uint8]
) -> None:
    folder = _copy(server, "swapped")
    client.load_model("swapped", headers=ADMIN)
    x = normalise(fashion_images[:4], SOURCE)
    assert _infer(client, "swapped", x)[0] == "1"
    # Version 2 is another network with the same input, output and labels.
    (folder / "2").mkdir()
    shutil.copy(server.model_dir / "resnet-fashion" / "1" / "model.onnx", folder / "2")
    client.load_model("swapped", headers=ADMIN)
    assert client.get_model_metadata("swapped")["versions"] == ["1", "2"]
    version, logits = _infer(client, "swapped", x)
    assert version == "2"
    np.testing.assert_array_equal(logits, _infer(client, "resnet-fashion", x, version="1")[1])
    old_version, old_logits = _infer(client, "swapped", x, version="1")
    assert old_version == "1"
    np.testing.assert_array_equal(old_logits, _infer(client, SOURCE, x)[1])


def test_unload_removes_a_model(
    client: triton.InferenceServerClient, server: Server, http: httpx.Client
) -> None:
    _copy(server, "short-lived")
    client.load_model("short-lived", headers=ADMIN)
    assert client.is_model_ready("short-lived")
    client.unload_model("short-lived", headers=ADMIN)
    assert not client.is_model_ready("short-lived")
    assert http.get("/v2/models/short-lived/ready").status_code == 404
    x = np.zeros((1, 1, 28, 28), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, "short-lived", x)
    assert caught.value.status() == "404"
    assert _index(client)[("short-lived", None)]["reason"] == "not loaded"
    with pytest.raises(InferenceServerException) as again:
        client.unload_model("short-lived", headers=ADMIN)
    assert again.value.status() == "404"
    client.load_model("short-lived", headers=ADMIN)  # and back, from the same folder
    assert client.is_model_ready("short-lived")


def test_requests_during_reloads_all_succeed(
    client: triton.InferenceServerClient, server: Server, fashion_images: npt.NDArray[np.uint8]
) -> None:
    folder = _copy(server, "busy")
    client.load_model("busy", headers=ADMIN)
    x = normalise(fashion_images[:2], SOURCE)
    request = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.ravel()}
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    stop = threading.Event()
    infer_status: list[int] = []
    ready_status: list[int] = []

    def infer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                infer_status.append(http.post("/v2/models/busy/infer", content=request).status_code)

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                ready_status.append(http.get("/v2/models/busy/ready").status_code)
                time.sleep(0.005)

    threads = [threading.Thread(target=infer) for _ in range(4)]
    threads.append(threading.Thread(target=probe))
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        client.load_model("busy", headers=ADMIN)  # the same version again
        (folder / "2").mkdir()
        shutil.copy(folder / "1" / "model.onnx", folder / "2")
        client.load_model("busy", headers=ADMIN)  # a new version
        client.load_model("busy", headers=ADMIN)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(infer_status) > 20 and set(infer_status) == {200}
    assert ready_status and set(ready_status) == {200}
    assert _infer(client, "busy", x)[0] == "2"


@pytest.mark.parametrize(
    "name", ["..", "%2e%2e", "..%2F..%2Fetc", ".hidden", "notes.txt", "%00", "lenet5-fashion%2F1"]
)
def test_only_direct_model_folders_load(http: httpx.Client, server: Server, name: str) -> None:
    hidden = server.model_dir / ".hidden"
    if not hidden.exists():
        shutil.copytree(server.model_dir / SOURCE, hidden)
        (server.model_dir / "notes.txt").write_text("not a model")
    for action in ("load", "unload"):
        response = http.post(f"/v2/repository/models/{name}/{action}", headers=ADMIN)
        assert 400 <= response.status_code < 500, response.text
        assert isinstance(response.json()["error"], str)
    listed = {row["name"] for row in http.post("/v2/repository/index", headers=ADMIN).json()}
    assert not listed & {".hidden", "notes.txt", ".."}


def test_a_model_that_fails_to_load_says_why(
    client: triton.InferenceServerClient, server: Server
) -> None:
    folder = _copy(server, "broken")
    (folder / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("broken", headers=ADMIN)
    assert caught.value.status() == "400"
    assert "failed to load 'broken'" in str(caught.value.message())
    row = _index(client)[("broken", "1")]
    assert row["state"] == "UNAVAILABLE" and "onnx" in row["reason"].lower()
    assert not client.is_model_ready("broken")
    assert client.is_server_ready()  # the other models still serve


def test_a_failed_reload_keeps_the_model_serving(
    client: triton.InferenceServerClient, server: Server
) -> None:
    """Triton's rule: a reload that fails leaves the loaded model as it was."""
    folder = _copy(server, "steady")
    client.load_model("steady", headers=ADMIN)
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(b"half-written upload")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("steady", headers=ADMIN)
    assert caught.value.status() == "400"
    assert "failed to load 'steady'" in str(caught.value.message())
    assert client.is_model_ready("steady")
    assert _infer(client, "steady", np.zeros((1, 1, 28, 28), dtype=np.float32))[0] == "1"
    assert _index(client)[("steady", "1")]["state"] == "READY"


def test_config_overrides_are_refused(http: httpx.Client) -> None:
    response = http.post(
        f"/v2/repository/models/{SOURCE}/load",
        json={"parameters": {"config": "{}"}},
        headers=ADMIN,
    )
    assert response.status_code == 400
    assert "not supported" in response.json()["error"]
    bad = http.post(f"/v2/repository/models/{SOURCE}/load", content=b"{nope", headers=ADMIN)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
