"""Any ONNX CNN layout: real models exported here, imported with `import-onnx`, served.

MobileNetV2 with its ImageNet weights is wrapped four ways and exported: to take NHWC input
(as TensorFlow exports do), to take uint8 pixels and normalise them in its graph, to end in
Softmax, and all three at once. Each is imported with nothing said about its layout, datatype
or output (they are read from the file), then served beside the committed plain version: each
must classify the sample photos as the plain version does, list the same convolutions with the
same receptive fields, give the same feature maps, and describe its own input on /v2.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from testkit import MODELS

from model_export.onnx_import import ImportSpec, import_onnx_model
from service.app import create_app
from service.config import Settings
from service.model_card import load_card
from service.preprocessing import preprocess

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.train]

PLAIN = "mobilenetv2-imagenet"
SAMPLES = Path(__file__).resolve().parents[2] / "service" / "static" / "samples"
PHOTOS = sorted(SAMPLES.glob("*.jpg"))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VARIANTS = {
    # name: (channels last, uint8 pixels, softmax at the end)
    "nhwc": (True, False, False),
    "uint8": (False, True, False),
    "softmax": (False, False, True),
    "nhwc-uint8-softmax": (True, True, True),
}


class Wrapped(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, inner: Any, *, nhwc: bool, uint8: bool, softmax: bool) -> None:
        super().__init__()
        self.inner, self.nhwc, self.uint8, self.softmax = inner, nhwc, uint8, softmax
        shape = (1, 1, 1, 3) if nhwc else (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(MEAN).reshape(shape))
        self.register_buffer("std", torch.tensor(STD).reshape(shape))

    def forward(self, x: Any) -> Any:
        if self.uint8:
            x = (x.float() / 255.0 - self.mean) / self.std
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        logits = self.inner(x)
        return torch.softmax(logits, dim=1) if self.softmax else logits


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export.architectures import MobileNetV2
    from model_export.pretrained import mobilenet_weights_path

    inner = MobileNetV2(num_classes=1000)
    inner.load_state_dict(torch.load(mobilenet_weights_path(), weights_only=True))
    inner.eval()
    root = tmp_path_factory.mktemp("layouts")
    repo = root / "models"
    shutil.copytree(MODELS / PLAIN, repo / PLAIN)
    labels = MODELS / PLAIN / "labels.txt"
    for name, (nhwc, uint8, softmax) in VARIANTS.items():
        model = Wrapped(inner, nhwc=nhwc, uint8=uint8, softmax=softmax).eval()
        shape = (1, 224, 224, 3) if nhwc else (1, 3, 224, 224)
        example = torch.zeros(shape, dtype=torch.uint8 if uint8 else torch.float32)
        path = root / f"{name}.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
        )
        import_onnx_model(
            path,
            name=f"mnv2-{name}",
            labels_path=labels,
            spec=ImportSpec(resize="center-crop", resize_shorter=256),
            model_dir=repo,
        )
    return repo


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    settings = Settings(providers="cpu", model_dir=repository)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _classify(client: TestClient, model: str) -> list[dict[str, Any]]:
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS]
    response = client.post(f"/v1/models/{model}/classify?top_k=5", files=files)
    assert response.status_code == 200, response.text
    return [r["predictions"] for r in response.json()["results"]]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_layout_is_read_from_the_file(repository: Path, variant: str) -> None:
    nhwc, uint8, softmax = VARIANTS[variant]
    card = json.loads((repository / f"mnv2-{variant}" / "model.json").read_text())
    assert card["input"]["layout"] == ("NHWC" if nhwc else "NCHW")
    assert card["input"]["dtype"] == ("uint8" if uint8 else "float32")
    assert (card["input"]["mean"] is None) is uint8
    assert card["output"] == {"name": "scores", "kind": "probabilities" if softmax else "logits"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_layout_classifies_the_photos_as_the_plain_model(
    client: TestClient, variant: str
) -> None:
    plain = _classify(client, PLAIN)
    other = _classify(client, f"mnv2-{variant}")
    for mine, theirs in zip(other, plain, strict=True):
        assert [p["index"] for p in mine] == [p["index"] for p in theirs]
        np.testing.assert_allclose(
            [p["probability"] for p in mine], [p["probability"] for p in theirs], atol=1e-4
        )
    assert plain[0][0]["label"] == "Egyptian cat"  # chelsea.jpg: the check means something


def _convolutions(info: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (layer["output_shape"], layer["receptive_field"])
        for layer in info["layers"]
        if layer["op_type"] == "Conv"
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layers_receptive_fields_and_feature_maps_follow_the_layout(
    client: TestClient, variant: str
) -> None:
    plain = client.get(f"/v1/models/{PLAIN}").json()
    other = client.get(f"/v1/models/mnv2-{variant}").json()
    assert _convolutions(other) == _convolutions(plain)
    assert len(_convolutions(plain)) == 52
    channels_last = [layer for layer in other["layers"] if layer["output_shape"][-1] == 3]
    assert not channels_last  # channels-last data (preprocessing in the graph) is not a layer
    mine = [layer["name"] for layer in other["layers"] if layer["op_type"] == "Conv"][10]
    theirs = [layer["name"] for layer in plain["layers"] if layer["op_type"] == "Conv"][10]
    photo = PHOTOS[0].read_bytes()
    maps = [
        client.post(
            f"/v1/models/{model}/feature-maps?layer={layer}&format=npy",
            content=photo,
            headers={"Content-Type": "image/jpeg"},
        )
        for model, layer in ((f"mnv2-{variant}", mine), (PLAIN, theirs))
    ]
    assert all(r.status_code == 200 for r in maps), [r.text for r in maps]
    arrays = [np.load(io.BytesIO(r.content)) for r in maps]
    assert arrays[0].shape == arrays[1].shape
    np.testing.assert_allclose(arrays[0], arrays[1], atol=1e-3)


def test_v2_describes_and_takes_each_models_own_input(client: TestClient, repository: Path) -> None:
    meta = client.get("/v2/models/mnv2-nhwc-uint8-softmax").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}]
    config = client.get("/v2/models/mnv2-nhwc-uint8-softmax/config").json()
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == [224, 224, 3]
    spec = load_card(repository / "mnv2-nhwc-uint8-softmax" / "model.json").input
    pixels = preprocess(PHOTOS[0].read_bytes(), spec, max_pixels=10**8)[None]
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 224, 224, 3)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "scores", "parameters": {"classification": 1}}],
    }
    response = client.post("/v2/models/mnv2-nhwc-uint8-softmax/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"][0].endswith(":285:Egyptian cat")
    # Other datatypes are converted, never wrapped or truncated.
    for value, words in ((300.0, "within [0, 255]"), (2.5, "whole numbers")):
        tensor = body["inputs"][0] | {"datatype": "FP32", "data": [value] * pixels.size}
        refused = client.post("/v2/models/mnv2-nhwc-uint8-softmax/infer", json={"inputs": [tensor]})
        assert refused.status_code == 400 and words in refused.json()["error"]
