"""KServe's own Python SDK (``kserve.InferenceRESTClient``, protocol v2) against a live cnnserve.

kserve is heavy (kubernetes, pandas, grpcio, fastapi... about 450 MB installed) and pins its
own fastapi, starlette and pillow, so it gets a virtual environment of its own, .venv-kserve,
built on first use and rebuilt from scratch when the requirement or the interpreter changes.
The SDK calls run there as a subprocess (kserve_sdk_client.py prints what they returned); this
process runs the server, builds the tensors with the service's own preprocessing, and checks
the answers against what /v1 classify says about the same images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from testkit import MODELS, REPO, png
from v2_support import Server, softmax

from service.config import Settings
from service.model_card import load_card
from service.preprocessing import preprocess

# The install below can take minutes on a busy 2-core machine, and pytest-timeout counts the
# fixture that builds the venv against the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KSERVE_VENV = REPO / ".venv-kserve"
# The version these tests were verified with. kserve 0.21.0 installs from PyPI wheels alone
# (no torch, no CUDA, nothing built from source); pip resolves its dependencies: 74 MB of
# wheels, 451 MB installed, about 2 min 15 s from an empty pip cache on 2 busy cores. Listing
# the 45 packages `import kserve` needs and installing them with --no-deps saves little
# (372 MB, 51 s instead of 61 s from local wheels): it imports kubernetes, pandas and numpy,
# most of the size, at the top. So the plain install it is.
KSERVE_REQUIREMENTS = ("kserve==0.21.0",)
PIP_INSTALL = ("install", "-q", "--disable-pip-version-check", "--only-binary=:all:")
CLIENT_SCRIPT = Path(__file__).with_name("kserve_sdk_client.py")

FASHION = "lenet5-fashion"
MOBILENET = "mobilenetv2-imagenet"
MODELS_UNDER_TEST = (FASHION, MOBILENET)
# As in kserve_sdk_client.ENCODINGS: JSON both ways, binary both ways, binary in / JSON out.
ENCODINGS = ("json", "binary", "binary-input")
# /v1 and /v2 run the same ONNX session on the same float32 tensors; only how requests are
# batched may differ (and with it the order of some float sums). Measured: identical (max
# difference 0.0); the bound leaves room for that rounding, and a tensor 5 % off fails it.
PROBABILITY_ATOL = 1e-5
SAMPLES = REPO / "service" / "static" / "samples"
EGYPTIAN_CAT = 285  # ImageNet class of scikit-image's chelsea


@dataclass(frozen=True)
class Batch:
    """Images as uploaded to /v1, and the input tensor the service makes of them, for /v2."""

    files: list[tuple[str, bytes, str]]  # filename, bytes, media type
    tensor: npt.NDArray[np.float32]  # N x C x H x W


def _batch(model: str, files: list[tuple[str, bytes, str]]) -> Batch:
    """The tensor exactly as /v1 builds it: the service's preprocessing and model.json."""
    spec = load_card(MODELS / model / "model.json").input
    max_pixels = Settings.model_fields["max_image_pixels"].default
    tensor = np.stack([preprocess(data, spec, max_pixels=max_pixels) for _, data, _ in files])
    return Batch(files, np.ascontiguousarray(tensor, dtype=np.float32))


@pytest.fixture(scope="module")
def batches(fashion_images: npt.NDArray[np.uint8], photos: dict[str, bytes]) -> dict[str, Batch]:
    """Real Fashion-MNIST test images for LeNet-5; real photos for MobileNetV2 (the UI's
    samples and scikit-learn's two)."""
    fashion = [
        (f"fashion-{i}.png", png(image), "image/png") for i, image in enumerate(fashion_images)
    ]
    jpegs = [(path.name, path.read_bytes()) for path in sorted(SAMPLES.glob("*.jpg"))]
    jpegs += [(f"{name}.jpg", photos[name]) for name in ("china", "flower")]
    return {
        FASHION: _batch(FASHION, fashion),
        MOBILENET: _batch(MOBILENET, [(name, data, "image/jpeg") for name, data in jpegs]),
    }


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    """The interpreter of .venv-kserve, installed when missing or stale (a stamp records the
    requirements and the Python it was built for)."""
    python = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / ".installed"
    wanted = "\n".join((sys.version, *KSERVE_REQUIREMENTS))
    if not stamp.is_file() or stamp.read_text() != wanted:
        shutil.rmtree(KSERVE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", *PIP_INSTALL, *KSERVE_REQUIREMENTS],
            check=True,
            timeout=840,
        )
        stamp.write_text(wanted)
    return python


@pytest.fixture(scope="module")
def sdk(
    kserve_python: Path,
    server: Server,
    batches: dict[str, Batch],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """What every KServe SDK call returned (kserve_sdk_client.py, run once for the module)."""
    tensors = tmp_path_factory.mktemp("kserve-tensors")
    for model, batch in batches.items():
        np.save(tensors / f"{model}.npy", batch.tensor)
    done = subprocess.run(
        [str(kserve_python), str(CLIENT_SCRIPT), server.url, str(tensors)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def native(server: Server, batches: dict[str, Batch]) -> dict[str, npt.NDArray[np.float64]]:
    """/v1 classify's raw probabilities (no temperature: what the V2 logits give after a
    softmax) of every class, image by image, per model."""
    found = {}
    for model, batch in batches.items():
        classes = len(load_card(MODELS / model / "model.json").labels)
        response = httpx.post(
            f"{server.url}/v1/models/{model}/classify",
            params={"top_k": classes, "calibrated": "false"},
            files=[("file", file) for file in batch.files],
            timeout=120,
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [name for name, _, _ in batch.files]
        probabilities = np.zeros((len(results), classes))
        for row, result in enumerate(results):
            for prediction in result["predictions"]:
                probabilities[row, prediction["index"]] = prediction["probability"]
        found[model] = probabilities
    return found


def test_server_is_live_and_ready(sdk: dict[str, Any]) -> None:
    assert sdk["server_live"] is True
    assert sdk["server_ready"] is True


def test_models_are_ready_and_an_unknown_one_is_not(sdk: dict[str, Any]) -> None:
    assert sdk["model_ready"] == {FASHION: True, MOBILENET: True, "no-such-model": False}


@pytest.mark.parametrize("model", MODELS_UNDER_TEST)
def test_the_sdk_sent_and_got_the_encoding_it_asked_for(sdk: dict[str, Any], model: str) -> None:
    """JSON is JSON on the wire; binary data is a JSON header plus raw bytes, both ways."""
    framing = {
        encoding: (exchange["request"], exchange["response"])
        for encoding, exchange in sdk["infer"][model].items()
    }
    json_only = {"content_type": "application/json", "header_length": None}
    assert framing["json"] == (json_only, json_only)
    for encoding in ("binary", "binary-input"):
        request, _ = framing[encoding]
        assert request["content_type"] == "application/octet-stream"
        assert request["header_length"] > 0
    _, response = framing["binary"]
    assert response["content_type"] == "application/octet-stream"
    assert response["header_length"] > 0
    assert framing["binary-input"][1] == json_only


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("model", MODELS_UNDER_TEST)
def test_answers_equal_the_native_api(
    sdk: dict[str, Any],
    native: dict[str, npt.NDArray[np.float64]],
    model: str,
    encoding: str,
) -> None:
    """The same images, the same model: the /v2 logits after softmax are /v1's probabilities."""
    answer = sdk["infer"][model][encoding]
    expected = native[model]
    assert answer["model_name"] == model
    assert answer["id"] == f"kserve-{model}-{encoding}"
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"]) == ("logits", "FP32")
    assert output["shape"] == list(expected.shape)
    logits = np.asarray(output["data"], dtype=np.float32)
    assert logits.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(softmax(logits), expected, rtol=0, atol=PROBABILITY_ATOL)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_mobilenet_sees_the_cat(
    sdk: dict[str, Any], batches: dict[str, Batch], encoding: str
) -> None:
    """The photos reach the model as photos: chelsea is an Egyptian cat."""
    names = [name for name, _, _ in batches[MOBILENET].files]
    logits = np.asarray(sdk["infer"][MOBILENET][encoding]["outputs"][0]["data"])
    assert logits[names.index("chelsea.jpg")].argmax() == EGYPTIAN_CAT


def test_errors_reach_the_sdk_with_the_servers_message(sdk: dict[str, Any]) -> None:
    assert sdk["error"]["status"] == 400
    # kserve puts the body's "error" first in its HTTPStatusError text.
    assert sdk["error"]["message"].startswith(
        "input 'input': expected shape [-1, 1, 28, 28], got [2, 3], '400 Bad Request'"
    )
