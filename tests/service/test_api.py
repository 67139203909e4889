"""The native API in process (FastAPI's TestClient runs the real lifespan and models)."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from testkit import MODELS, png, served_version

from model_export.datasets import Split
from service.app import create_app
from service.config import Settings
from service.errors import codes_by_status

FASHION = ["lenet5-fashion", "vggnet-fashion", "resnet-fashion"]


def client_for(**settings: object) -> TestClient:
    options: dict[str, object] = {"providers": "cpu", "model_dir": MODELS} | settings
    return TestClient(create_app(Settings.model_validate(options)))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with client_for() as c:
        yield c


def error_of(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}
    return body["error"]  # type: ignore[no-any-return]


def files(*images: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, data, "image/png")) for name, data in images]


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert {m["name"]: m["state"] for m in body["models"]} == {
        name: "ready" for name in [*FASHION, "mobilenetv2-imagenet"]
    }
    assert all(m["providers"] == ["CPUExecutionProvider"] for m in body["models"])


def test_model_list_and_info(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["models"]
    assert sorted(m["name"] for m in listed) == sorted([*FASHION, "mobilenetv2-imagenet"])
    info = client.get("/v1/models/lenet5-fashion").json()
    assert info["versions"] == ["1"] and info["state"] == "ready"
    assert info["input"] | {"mean": None, "std": None} == {
        "name": "input",
        "shape": [-1, 1, 28, 28],
        "layout": "NCHW",
        "datatype": "FP32",
        "color_mode": "L",
        "size": [28, 28],
        "mean": None,
        "std": None,
        "resize": "stretch",
        "resize_shorter": None,
    }
    assert info["labels"][9] == "Ankle boot" and info["providers"] == ["CPUExecutionProvider"]
    assert info["layers"][0] == {
        "name": "conv1",
        "op_type": "Conv",
        "output_shape": [6, 28, 28],
        "receptive_field": {"size": [5, 5], "jump": [1, 1], "start": [0, 0]},
    }
    assert info["metrics"]["test_accuracy"] >= 0.90
    assert client.get("/v1/models/lenet5-fashion?version=1").json()["version"] == "1"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/nope", 404, "model_not_found"),
        ("/v1/models/lenet5-fashion?version=7", 404, "model_not_found"),
        ("/v1/models/lenet5-fashion?version=latest", 400, "invalid_parameter"),
        ("/v1/nothing-here", 404, "not_found"),
    ],
)
def test_lookup_errors(client: TestClient, path: str, status: int, code: str) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_wrong_method_has_the_error_shape(client: TestClient) -> None:
    response = client.delete("/v1/models")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


@pytest.mark.slow
@pytest.mark.parametrize("name", FASHION)
def test_fashion_models_classify_real_test_images(
    client: TestClient, fashion_test: Split, name: str
) -> None:
    correct = 0
    for start in range(0, 256, 64):
        images = [(f"img{i}.png", png(fashion_test.images[i])) for i in range(start, start + 64)]
        response = client.post(f"/v1/models/{name}/classify?top_k=3", files=files(*images))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == name and body["model_version"] == served_version(name)
        assert [r["filename"] for r in body["results"]] == [n for n, _ in images]
        for i, result in enumerate(body["results"]):
            top = result["predictions"]
            assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]
            assert top[0]["label"] == fashion_test_labels()[top[0]["index"]]
            correct += top[0]["index"] == fashion_test.labels[start + i]
    assert correct / 256 >= 0.85


def fashion_test_labels() -> list[str]:
    return json.loads((MODELS / "lenet5-fashion" / "model.json").read_text())["labels"]


def test_raw_body_and_octet_stream(client: TestClient, fashion_test: Split) -> None:
    data = png(fashion_test.images[0])  # an ankle boot
    for content_type in ("image/png", "application/octet-stream"):
        response = client.post(
            "/v1/models/lenet5-fashion/classify",
            content=data,
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert result["filename"] is None and len(result["predictions"]) == 5
        assert result["predictions"][0]["label"] == "Ankle boot"
        assert (
            0.99
            <= sum(
                p["probability"]
                for p in client.post(
                    "/v1/models/lenet5-fashion/classify?top_k=10",
                    content=data,
                    headers={"Content-Type": content_type},
                ).json()["results"][0]["predictions"]
            )
            <= 1.01
        )


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"x", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"content": b"x"}, 415, "unsupported_media_type"),
        (
            {"content": b"not an image", "headers": {"Content-Type": "image/png"}},
            400,
            "invalid_image",
        ),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
        ({"files": [("image", ("a.png", b"x", "image/png"))]}, 400, "invalid_parameter"),
        (
            {"data": {"file": "text, not a file"}, "files": [("other", ("a", b"x", "text/plain"))]},
            400,
            "invalid_parameter",
        ),
        (
            {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "invalid_parameter",
        ),
    ],
)
def test_bad_uploads(client: TestClient, kwargs: dict[str, object], status: int, code: str) -> None:
    response = client.post("/v1/models/lenet5-fashion/classify", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code


@pytest.mark.parametrize("top_k", ["0", "11", "-1", "many", "1e9"])
def test_top_k_out_of_range(client: TestClient, fashion_test: Split, top_k: str) -> None:
    response = client.post(
        f"/v1/models/lenet5-fashion/classify?top_k={top_k}",
        files=files(("a.png", png(fashion_test.images[0]))),
    )
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter"


def test_a_bad_image_among_good_ones_is_named(client: TestClient, fashion_test: Split) -> None:
    good = png(fashion_test.images[0])
    response = client.post(
        "/v1/models/lenet5-fashion/classify", files=files(("a.png", good), ("b.png", b"garbage"))
    )
    error = error_of(response)
    assert response.status_code == 400 and error["code"] == "invalid_image"
    assert error["detail"] == error["detail"] | {"index": 1, "filename": "b.png"}


def test_limits(fashion_test: Split) -> None:
    image = png(fashion_test.images[0])
    with client_for(max_images_per_request=3, max_body_bytes=20_000, max_image_pixels=500) as c:
        many = c.post(
            "/v1/models/lenet5-fashion/classify",
            files=files(*[(f"{i}.png", image) for i in range(4)]),
        )
        assert many.status_code == 413 and error_of(many)["code"] == "too_many_images"
        assert error_of(many)["detail"]["limit"] == 3
        more = c.post(
            "/v1/models/lenet5-fashion/classify",
            files=files(*[(f"{i}.png", image) for i in range(7)]),
        )
        assert more.status_code == 413 and error_of(more)["code"] == "too_many_images"
        big = c.post(
            "/v1/models/lenet5-fashion/classify",
            content=b"\0" * 30_000,
            headers={"Content-Type": "image/png"},
        )
        assert big.status_code == 413 and error_of(big)["code"] == "body_too_large"
        wide = c.post(
            "/v1/models/lenet5-fashion/classify",
            content=image,
            headers={"Content-Type": "image/png"},
        )  # 784 pixels > 500
        assert wide.status_code == 413 and error_of(wide)["code"] == "image_too_large"
        assert (
            c.post(
                "/v1/models/lenet5-fashion/classify",
                files=files(("ok.png", png(fashion_test.images[0][:20, :20]))),
            ).status_code
            == 200
        )  # the service is still up


def test_mobilenet_classifies_real_photos(client: TestClient, photos: dict[str, bytes]) -> None:
    def top(name: str, k: int) -> list[str]:
        response = client.post(
            f"/v1/models/mobilenetv2-imagenet/classify?top_k={k}",
            content=photos[name],
            headers={"Content-Type": "image/png"},
        )
        assert response.status_code == 200, response.text
        return [p["label"] for p in response.json()["results"][0]["predictions"]]

    assert top("chelsea", 1)[0] in {"Egyptian cat", "tabby", "tiger cat"}
    assert top("coffee", 1) == ["espresso"]
    assert {"moped", "motor scooter"} & set(top("motorcycle_left", 2))


def _variants(data: bytes) -> dict[str, bytes]:
    image = Image.open(io.BytesIO(data)).convert("RGB")

    def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90 degrees clockwise; viewers rotate it back
    rotated = image.transpose(Image.Transpose.ROTATE_270)
    return {
        "png": encode(image, "PNG"),
        "jpeg": encode(image, "JPEG", quality=95),
        "rgba": encode(image.convert("RGBA"), "PNG"),
        "grey": encode(image.convert("L"), "PNG"),
        "exif-rotated": encode(rotated, "JPEG", quality=95, exif=exif),
    }


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_the_same_photo_in_any_encoding_gives_the_same_top1(
    client: TestClient, photos: dict[str, bytes], photo: str
) -> None:
    variants = _variants(photos[photo])
    response = client.post(
        "/v1/models/mobilenetv2-imagenet/classify?top_k=1", files=files(*variants.items())
    )
    tops = {r["filename"]: r["predictions"][0]["label"] for r in response.json()["results"]}
    assert len(set(tops.values())) == 1, tops


def feature_maps(
    client: TestClient, model: str, image: bytes, *layers: str, fmt: str = "json"
) -> object:
    query = "&".join(f"layer={name}" for name in layers)
    return client.post(
        f"/v1/models/{model}/feature-maps?{query}&format={fmt}", files=files(("x.png", image))
    )


def decode(layer: dict[str, object]) -> np.ndarray:
    raw = base64.b64decode(str(layer["data"]))
    return np.frombuffer(raw, "<f4").reshape(layer["shape"])  # type: ignore[arg-type]


def test_feature_maps_are_the_real_activations(client: TestClient, fashion_test: Split) -> None:
    image = png(fashion_test.images[1])
    response = feature_maps(client, "lenet5-fashion", image, "conv1", "relu1", "relu2", "pool2")
    assert response.status_code == 200  # type: ignore[attr-defined]
    layers = {layer["name"]: layer for layer in response.json()["layers"]}  # type: ignore[attr-defined]
    conv1, relu1 = decode(layers["conv1"]), decode(layers["relu1"])
    assert np.allclose(relu1, np.maximum(conv1, 0))  # ReLU
    relu2, pool2 = decode(layers["relu2"]), decode(layers["pool2"])
    assert np.allclose(pool2, relu2.reshape(16, 5, 2, 5, 2).max(axis=(2, 4)))  # 2x2 max-pool
    assert layers["pool2"]["receptive_field"] == {
        "size": [16, 16],
        "jump": [4, 4],
        "start": [5.5, 5.5],
    }
    stats = layers["conv1"]["stats"]
    assert stats["min"] == pytest.approx(conv1.min()) and stats["mean"] == pytest.approx(
        conv1.mean(), abs=1e-5
    )


@pytest.mark.parametrize(
    ("model", "layer", "op"),
    [
        ("resnet-fashion", "block3.add", "Add"),
        ("resnet-fashion", "pool", "GlobalAveragePool"),
        ("vggnet-fashion", "block2.pool", "MaxPool"),
        ("mobilenetv2-imagenet", "features.3.conv.1.2", "Clip"),
    ],
)
def test_feature_maps_for_each_layer_kind(
    client: TestClient, photos: dict[str, bytes], model: str, layer: str, op: str
) -> None:
    info = client.get(f"/v1/models/{model}").json()
    listed = {entry["name"]: entry for entry in info["layers"]}
    response = feature_maps(client, model, photos["chelsea"], layer)
    body = response.json()["layers"][0]  # type: ignore[attr-defined]
    assert body["op_type"] == op and body["shape"] == listed[layer]["output_shape"]
    assert body["receptive_field"] == listed[layer]["receptive_field"]
    assert np.isfinite(decode(body)).all()


def test_png_and_npy_formats(client: TestClient, fashion_test: Split) -> None:
    image = png(fashion_test.images[2])
    grid = feature_maps(client, "lenet5-fashion", image, "conv2", fmt="png")
    assert grid.headers["content-type"] == "image/png"  # type: ignore[attr-defined]
    picture = Image.open(io.BytesIO(grid.content))  # type: ignore[attr-defined]
    assert picture.mode == "RGB" and picture.width >= 4 * 48  # 16 channels, 4 per row
    npy = feature_maps(client, "lenet5-fashion", image, "conv2", fmt="npy")
    array = np.load(io.BytesIO(npy.content))  # type: ignore[attr-defined]
    as_json = feature_maps(client, "lenet5-fashion", image, "conv2")
    assert array.dtype == np.float32 and array.shape == (16, 10, 10)
    assert np.array_equal(array, decode(as_json.json()["layers"][0]))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("layer=nope", "unknown_layer"),
        ("", "unknown_layer"),
        ("layer=conv1&layer=conv2&format=png", "invalid_parameter"),
        ("layer=conv1&format=gif", "invalid_parameter"),
    ],
)
def test_feature_map_errors(client: TestClient, fashion_test: Split, query: str, code: str) -> None:
    response = client.post(
        f"/v1/models/lenet5-fashion/feature-maps?{query}",
        files=files(("a.png", png(fashion_test.images[0]))),
    )
    assert response.status_code == 400 and error_of(response)["code"] == code
    if code == "unknown_layer":
        assert "conv1" in error_of(response)["detail"]["valid_layers"]  # type: ignore[index]


def test_metrics_count_requests_stages_and_providers(
    client: TestClient, fashion_test: Split
) -> None:
    client.post(
        "/v1/models/lenet5-fashion/classify", files=files(("a.png", png(fashion_test.images[0])))
    )
    text = client.get("/metrics").text
    assert (
        'cnnserve_requests_total{endpoint="/v1/models/{name}/classify",'
        'model="lenet5-fashion",status="200"}'
    ) in text
    for stage in ("decode", "preprocess", "inference"):
        assert (
            f'cnnserve_stage_duration_seconds_count{{model="lenet5-fashion",stage="{stage}"}}'
            in text
        )
    assert 'cnnserve_models{provider="cpu",state="ready"} 4.0' in text
    assert 'cnnserve_images_total{model="lenet5-fashion"}' in text


def test_openapi_documents_every_endpoint_and_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    classify = spec["paths"]["/v1/models/{name}/classify"]["post"]
    assert {"400", "404", "413", "415", "503"} <= set(classify["responses"])
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert {
        "/health/live",
        "/health/ready",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/feature-maps",
        "/metrics",
    } <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    operations = [(path, op) for path, item in spec["paths"].items() for op in item.values()]
    assert not [path for path, op in operations if "422" in op["responses"]]  # never answered
    # Every error status names its codes, from the one table in service.errors.
    table = codes_by_status()
    errors = [{"$ref": f"#/components/schemas/{name}"} for name in ("ErrorResponse", "V2Error")]
    for path, op in operations:
        for status, response in op["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if schema in errors:
                assert response["description"] == ", ".join(table[int(status)]), (path, status)
    assert "401" in spec["paths"]["/metrics"]["get"]["responses"]
    assert "401" in spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert "401" not in spec["paths"]["/health/ready"]["get"]["responses"]
    parameters = {p["name"] for p in classify["parameters"]}
    assert parameters == {"name", "version", "top_k", "calibrated"}


def test_request_ids_and_security_headers(client: TestClient) -> None:
    given = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live", headers={"X-Request-ID": "bad id\twith tabs"})
    assert re.fullmatch("[0-9a-f]{32}", generated.headers["x-request-id"])
    ids = {client.get("/health/live").headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50 and generated.headers["x-request-id"] not in ids
    assert generated.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in generated.headers["content-security-policy"]


def test_api_keys(fashion_test: Split) -> None:
    with client_for(api_keys="k-one,k-two") as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 200
        missing = c.get("/v1/models")
        assert missing.status_code == 401 and error_of(missing)["code"] == "unauthorized"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k-two"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "k-one"}).status_code == 200
        assert c.get("/metrics").status_code == 401


def test_a_corrupt_model_is_unavailable_and_the_rest_serve(
    model_repo: Path, fashion_test: Split
) -> None:
    for graph in (model_repo / "vggnet-fashion").glob("*/model.onnx"):  # every version
        graph.write_bytes(b"\x08\x01garbage")
    (model_repo / "empty-model").mkdir()
    with client_for(model_dir=model_repo) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 200
        states = {m["name"]: m for m in ready.json()["models"]}
        assert states["vggnet-fashion"]["state"] == "unavailable"
        assert "not a loadable ONNX model" in states["vggnet-fashion"]["reason"]
        assert states["empty-model"]["state"] == "unavailable"
        assert states["lenet5-fashion"]["state"] == "ready"
        refused = c.post(
            "/v1/models/vggnet-fashion/classify",
            files=files(("a.png", png(fashion_test.images[0]))),
        )
        assert refused.status_code == 503 and error_of(refused)["code"] == "model_unavailable"
        info = c.get("/v1/models/vggnet-fashion").json()
        assert info["state"] == "unavailable" and info["reason"]
        assert (
            c.post(
                "/v1/models/lenet5-fashion/classify",
                files=files(("a.png", png(fashion_test.images[0]))),
            ).status_code
            == 200
        )


def test_no_model_at_all_is_not_ready(tmp_path: Path) -> None:
    with client_for(model_dir=tmp_path) as c:
        response = c.get("/health/ready")
        assert response.status_code == 503 and response.json()["status"] == "unavailable"
