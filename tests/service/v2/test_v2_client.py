"""Triton's own HTTP client (tritonclient.http, with its defaults) against a live cnnserve."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from testkit import MODELS, png
from tritonclient.utils import InferenceServerException
from v2_support import FASHION_MODELS, Server, normalise, softmax

from service.model_card import load_card
from service.preprocessing import preprocess

MODEL = "lenet5-fashion"
FASHION_LABELS = (MODELS / MODEL / "labels.txt").read_text().splitlines()


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.host, network_timeout=120.0) as c:
        yield c


def _input(array: np.ndarray, datatype: str = "FP32", *, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _logits(result: triton.InferResult) -> npt.NDArray[np.float32]:
    logits = result.as_numpy("logits")
    assert logits is not None
    return logits


# Health and metadata.


def test_server_is_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata_names_the_extensions(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "cnnserve"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", metadata["version"])
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(
        metadata["extensions"]
    )


@pytest.mark.parametrize("model", [*FASHION_MODELS, "mobilenetv2-imagenet"])
def test_every_model_is_ready(client: triton.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")
    assert not client.is_model_ready(model, "7")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.get_model_metadata(MODEL) == {
        "name": MODEL,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get_model_metadata(MODEL, "1")["name"] == MODEL
    mobilenet = client.get_model_metadata("mobilenetv2-imagenet")
    assert mobilenet["inputs"][0]["shape"] == [-1, 3, 224, 224]
    assert mobilenet["outputs"][0]["shape"] == [-1, 1000]


def test_metadata_of_an_unknown_model_or_version_is_404(
    client: triton.InferenceServerClient,
) -> None:
    for name, version in (("no-such-model", ""), (MODEL, "9")):
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata(name, version)
        assert caught.value.status() == "404"
        assert name in str(caught.value.message())


def _pbtxt(model: str) -> dict[str, object]:
    text = (MODELS / model / "config.pbtxt").read_text()

    def tensor(block: str) -> dict[str, object]:
        body = re.search(rf"{block}\s*\[\s*\{{(.*?)\}}\s*\]", text, re.S)
        assert body, f"no {block} in {model}/config.pbtxt"
        fields = body.group(1)
        dims = re.search(r"dims:\s*\[([^\]]*)\]", fields)
        assert dims
        return {
            "name": re.search(r'name:\s*"([^"]+)"', fields).group(1),  # type: ignore[union-attr]
            "data_type": re.search(r"data_type:\s*(\w+)", fields).group(1),  # type: ignore[union-attr]
            "dims": [int(d) for d in dims.group(1).split(",")],
        }

    top = text.split("input", 1)[0]
    return {
        "name": re.search(r'name:\s*"([^"]+)"', top).group(1),  # type: ignore[union-attr]
        "platform": re.search(r'platform:\s*"([^"]+)"', top).group(1),  # type: ignore[union-attr]
        "max_batch_size": int(re.search(r"max_batch_size:\s*(\d+)", top).group(1)),  # type: ignore[union-attr]
        "input": tensor("input"),
        "output": tensor("output"),
    }


@pytest.mark.parametrize("model", [*FASHION_MODELS, "mobilenetv2-imagenet"])
def test_config_pbtxt_matches_the_metadata(
    client: triton.InferenceServerClient, model: str
) -> None:
    """Triton, given the same folder, must see the model cnnserve describes."""
    pbtxt = _pbtxt(model)
    metadata = client.get_model_metadata(model)
    assert metadata["name"] == pbtxt["name"] == model
    assert metadata["platform"] == pbtxt["platform"]
    for ours, theirs in (
        (metadata["inputs"][0], pbtxt["input"]),
        (metadata["outputs"][0], pbtxt["output"]),
    ):
        assert isinstance(theirs, dict)
        assert ours["name"] == theirs["name"]
        assert f"TYPE_{ours['datatype']}" == theirs["data_type"]
        # max_batch_size > 0: Triton prepends the batch axis to dims, as -1.
        assert ours["shape"] == [-1, *theirs["dims"]]
    config = client.get_model_config(model)
    assert config["max_batch_size"] == pbtxt["max_batch_size"]
    assert config["input"][0]["dims"] == pbtxt["input"]["dims"]  # type: ignore[index]
    assert config["output"][0]["dims"] == pbtxt["output"]["dims"]  # type: ignore[index]


# Inference.


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("batch", [1, 17])
def test_infer_fp32(
    client: triton.InferenceServerClient,
    fashion_images: npt.NDArray[np.uint8],
    binary: bool,
    batch: int,
) -> None:
    x = normalise(fashion_images[:batch], MODEL)
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer(MODEL, [_input(x, binary=binary)], outputs=outputs, request_id="r-42")
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert response["id"] == "r-42"
    assert response["outputs"][0]["datatype"] == "FP32"
    assert response["outputs"][0]["shape"] == [batch, 10]
    assert ("data" in response["outputs"][0]) is not binary
    logits = _logits(result)
    assert logits.shape == (batch, 10)
    reference = _logits(client.infer(MODEL, [_input(x)]))  # all defaults: binary both ways
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_fp16_is_converted_to_fp32(
    client: triton.InferenceServerClient, fashion_images: npt.NDArray[np.uint8], binary: bool
) -> None:
    x32 = normalise(fashion_images[:5], MODEL)
    x16 = x32.astype(np.float16)
    half = _logits(client.infer(MODEL, [_input(x16, "FP16", binary=binary)]))
    exact = _logits(client.infer(MODEL, [_input(x16.astype(np.float32))]))
    # The same FP32 values reach the model, so the outputs are identical.
    np.testing.assert_array_equal(half, exact)
    assert half.dtype == np.float32


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: triton.InferenceServerClient, algorithm: str) -> None:
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    plain = _logits(client.infer(MODEL, [_input(x)]))
    squeezed = client.infer(
        MODEL,
        [_input(x)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # may be ignored: the client copes
    )
    np.testing.assert_array_equal(_logits(squeezed), plain)


def test_infer_a_named_version(client: triton.InferenceServerClient) -> None:
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    result = client.infer(MODEL, [_input(x)], model_version="1")
    assert result.get_response()["model_version"] == "1"


def test_default_outputs_follow_binary_data_output(server: Server) -> None:
    x = np.zeros((1, 1, 28, 28), dtype=np.float32)
    body, json_size = triton.InferenceServerClient.generate_request_body([_input(x)])
    # No outputs named: tritonclient asks for every output as binary (binary_data_output).
    response = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    result = triton.InferResult.from_response_body(response.content, header_length=header_length)
    assert result.get_output("logits")["parameters"]["binary_data_size"] == 40
    assert _logits(result).shape == (1, 10)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(
    client: triton.InferenceServerClient, fashion_images: npt.NDArray[np.uint8], binary: bool
) -> None:
    x = normalise(fashion_images[:3], MODEL)
    logits = _logits(client.infer(MODEL, [_input(x)]))
    wanted = triton.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    result = client.infer(MODEL, [_input(x)], outputs=[wanted])
    assert result.get_output("logits")["datatype"] == "BYTES"
    classes = result.as_numpy("logits")
    assert classes is not None and classes.shape == (3, 3)
    for row, scores in zip(classes, logits, strict=True):
        top = np.argsort(-scores, kind="stable")[:3]
        # tritonclient gives bytes from binary data and str from JSON.
        parsed = [(x.decode() if isinstance(x, bytes) else x).split(":", 2) for x in row]
        assert [int(index) for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [FASHION_LABELS[i] for i in top]
        # Triton's format: the output's own value, printed as %f.
        assert [float(value) for value, _, _ in parsed] == pytest.approx(
            scores[top].tolist(), abs=1e-6
        )


def test_outputs_selection_is_honoured(client: triton.InferenceServerClient) -> None:
    x = np.zeros((1, 1, 28, 28), dtype=np.float32)
    both = [
        triton.InferRequestedOutput("logits", class_count=2),
    ]
    result = client.infer(MODEL, [_input(x)], outputs=both)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [_input(x)], outputs=[triton.InferRequestedOutput("probs")])
    assert caught.value.status() == "400"
    assert "unknown output 'probs'" in str(caught.value.message())


def test_errors_reach_the_client_as_the_servers_message(
    client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [_input(np.zeros((2, 3), dtype=np.float32))])
    assert caught.value.status() == "400"
    assert caught.value.message() == "input 'input': expected shape [-1, 1, 28, 28], got [2, 3]"


@pytest.mark.parametrize("model", FASHION_MODELS)
def test_v2_equals_the_native_api(
    client: triton.InferenceServerClient,
    server: Server,
    fashion_images: npt.NDArray[np.uint8],
    model: str,
) -> None:
    """Same image, same model: the V2 logits after softmax are the native raw probabilities
    (?calibrated=false), and after dividing by the model's temperature, its calibrated ones."""
    images = fashion_images[:6]
    files = [("file", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    logits = _logits(client.infer(model, [_input(normalise(images, model))]))
    temperature = httpx.get(f"{server.url}/v1/models/{model}").json()["calibration"]["temperature"]
    assert temperature > 1  # fitted: the Fashion models were over-confident
    for calibrated, divisor in (("false", 1.0), ("true", temperature)):
        native = httpx.post(
            f"{server.url}/v1/models/{model}/classify",
            params={"top_k": 10, "calibrated": calibrated},
            files=files,
            timeout=60,
        )
        assert native.status_code == 200, native.text
        expected = np.zeros((len(images), 10))
        for row, result in enumerate(native.json()["results"]):
            for prediction in result["predictions"]:
                expected[row, prediction["index"]] = prediction["probability"]
        np.testing.assert_allclose(softmax(logits / divisor), expected, rtol=0, atol=1e-5)


def test_mobilenet_over_v2_matches_the_native_api(
    client: triton.InferenceServerClient, server: Server, photos: dict[str, bytes]
) -> None:
    """The 3x224x224 model, fed the photo preprocessed exactly as the native API does."""
    model = "mobilenetv2-imagenet"
    card = load_card(MODELS / model / "model.json")
    x = preprocess(photos["chelsea"], card.input, max_pixels=40_000_000)[None]
    wanted = [
        triton.InferRequestedOutput("logits", class_count=1),
    ]
    top = client.infer(model, [_input(x)], outputs=wanted).as_numpy("logits")
    assert top is not None and top.shape == (1, 1)
    assert top[0, 0].decode().endswith(":285:Egyptian cat")
    native = httpx.post(
        f"{server.url}/v1/models/{model}/classify",
        params={"top_k": 1000, "calibrated": "false"},
        files={"file": ("cat.jpg", photos["chelsea"], "image/jpeg")},
        timeout=60,
    )
    assert native.status_code == 200, native.text
    expected = np.zeros(1000)
    for prediction in native.json()["results"][0]["predictions"]:
        expected[prediction["index"]] = prediction["probability"]
    logits = _logits(client.infer(model, [_input(x)]))
    np.testing.assert_allclose(softmax(logits)[0], expected, rtol=0, atol=1e-5)
