"""The cpu image under Compose, against a real Docker engine.

`make docker-smoke` (docker/smoke.sh) starts a private engine, builds the image and runs this
module with CNNSERVE_DOCKER_SMOKE=1; anywhere else it is skipped. The module brings the
compose service up once, checks it from outside as a user would (the published port, `docker
inspect`, `docker exec`), and ends with `docker-compose down` during a request, so the tests
run in file order and the last one takes the service down.
"""

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.environ.get("CNNSERVE_DOCKER_SMOKE") != "1",
        reason="needs the Docker engine and image that `make docker-smoke` provides",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("CNNSERVE_DOCKER_CLI", "docker")
COMPOSE = [
    str(Path(sys.executable).parent / "docker-compose"),
    "--project-directory",
    str(ROOT),
    "-f",
    str(ROOT / "docker-compose.yml"),
]
IMAGE = os.environ.get("CNNSERVE_IMAGE", "cnnserve:cpu")
# What a plain `docker build .` (BuildKit, no --target) gave; IMAGE is the cpu target.
DEFAULT_IMAGE = os.environ.get("CNNSERVE_DEFAULT_IMAGE", "cnnserve:default")
PORT = int(os.environ.get("CNNSERVE_PORT", "8000"))
BASE_URL = f"http://127.0.0.1:{PORT}"
# Labels a correct ImageNet classifier gives scikit-image's chelsea (a tabby cat).
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
DEFAULT_MODELS = {"lenet5-fashion", "vggnet-fashion", "resnet-fashion", "mobilenetv2-imagenet"}


def _run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stdout}{result.stderr}"
    return result


def _default(setting: str) -> int:
    """The service's default for one of its limits (the compose file leaves them as they are)."""
    from service.config import Settings

    value = Settings.model_fields[setting].default
    assert isinstance(value, int)
    return value


def _chelsea_jpeg(scale: float = 1.0) -> bytes:
    """scikit-image's chelsea photo as a JPEG, optionally enlarged (to make decoding slower)."""
    from skimage import data

    image = Image.fromarray(data.chelsea())
    if scale != 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, content in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts += [head.encode(), content, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _inspect(container: str) -> dict[str, Any]:
    [info] = json.loads(_run(DOCKER, "inspect", container).stdout)
    return dict(info)


def _sigterm_times(container: str, since: float) -> list[float]:
    """When the engine sent SIGTERM to the container (wall clock, from `docker events`)."""
    events = _run(
        DOCKER,
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"container={container}",
        "--filter",
        "event=kill",
        "--format",
        '{{.TimeNano}} {{index .Actor.Attributes "signal"}}',
    ).stdout.split("\n")
    return [int(e.split()[0]) / 1e9 for e in events if e.split()[1:] == ["15"]]


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    """The compose service, up and healthy (`up --wait`); taken down at the end in any case."""
    up = subprocess.run(
        [*COMPOSE, "up", "-d", "--no-build", "--wait", "--wait-timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        if up.returncode != 0:
            logs = subprocess.run([*COMPOSE, "logs", "--no-color"], capture_output=True, text=True)
            pytest.fail(f"docker-compose up failed:\n{up.stderr}\n--- logs ---\n{logs.stdout}")
        yield _run(*COMPOSE, "ps", "-q", "cnnserve").stdout.strip()
    finally:
        subprocess.run([*COMPOSE, "down", "--volumes", "--timeout", "30"], capture_output=True)


def test_image_has_the_models_and_no_compiler_or_torch() -> None:
    script = (
        "set -e; cnnserve --help >/dev/null; ls /app/models;"
        " python3 -c 'import onnxruntime, fastapi, uvicorn';"
        " if python3 -c 'import torch' 2>/dev/null; then echo HAS_TORCH; fi;"
        " for cc in gcc cc c++ g++ clang; do command -v $cc && echo HAS_COMPILER || true; done"
    )
    out = _run(DOCKER, "run", "--rm", "--entrypoint", "sh", IMAGE, "-c", script).stdout
    assert set(out.split()) >= DEFAULT_MODELS
    assert "HAS_TORCH" not in out and "HAS_COMPILER" not in out


def test_plain_build_gives_the_cpu_image() -> None:
    """No --target builds the cpu image: the same settings as the cpu target, not the gpu ones."""
    keys = ("Env", "User", "Entrypoint", "Cmd", "ExposedPorts", "Healthcheck", "StopSignal")
    default, cpu = (_inspect(image)["Config"] for image in (DEFAULT_IMAGE, IMAGE))
    assert {k: default.get(k) for k in keys} == {k: cpu.get(k) for k in keys}
    assert "CNNSERVE_PROVIDERS=cpu" in default["Env"]


def test_container_is_healthy_and_not_root(container: str) -> None:
    info = _inspect(container)
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["User"].split(":")[0] == "10001"
    uid = _run(DOCKER, "exec", container, "id", "-u").stdout.strip()
    assert uid == "10001"


def test_port_is_published_on_loopback_only(container: str) -> None:
    bindings = _inspect(container)["NetworkSettings"]["Ports"]["8000/tcp"]
    assert bindings and {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    assert {int(b["HostPort"]) for b in bindings} == {PORT}


def test_ready_lists_every_default_model(container: str) -> None:
    response = httpx.get(f"{BASE_URL}/health/ready", timeout=10)
    assert response.status_code == 200
    assert all(name in response.text for name in DEFAULT_MODELS), response.text


def test_classifies_a_real_photo_through_the_published_port(container: str) -> None:
    response = httpx.post(
        f"{BASE_URL}/v1/models/mobilenetv2-imagenet/classify",
        files={"file": ("chelsea.jpg", _chelsea_jpeg(), "image/jpeg")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["filename"] == "chelsea.jpg"
    assert result["predictions"][0]["label"] in CAT_LABELS, result["predictions"][:3]


def test_metrics_are_exposed(container: str) -> None:
    response = httpx.get(f"{BASE_URL}/metrics", timeout=10)
    assert response.status_code == 200
    assert "# TYPE" in response.text


def test_down_finishes_the_request_in_flight_and_exits_0(container: str) -> None:
    """`docker-compose down` while large photos are being classified: 200, then exit 0."""
    photo = _chelsea_jpeg(scale=4.0)
    # As many as one request may hold (the default pixel budget), to keep the server busy longest.
    with Image.open(io.BytesIO(photo)) as image:
        pixels = image.width * image.height
    count = min(_default("max_images_per_request"), _default("max_request_pixels") // pixels)
    names = [f"cat-{i:02d}.jpg" for i in range(count)]
    body, content_type = _multipart([(name, photo) for name in names])
    # `docker wait` prints the exit code once the container stops, before down removes it.
    waiter = subprocess.Popen([DOCKER, "wait", container], stdout=subprocess.PIPE, text=True)
    outcome: dict[str, Any] = {}

    def classify() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        try:
            conn.request(
                "POST",
                "/v1/models/mobilenetv2-imagenet/classify?top_k=1",
                body=body,
                headers={"Content-Type": content_type},
            )
            outcome["sent"] = time.time()
            response = conn.getresponse()
            outcome["status"], outcome["body"] = response.status, response.read()
        except Exception as exc:  # reported below, with the timing
            outcome["error"] = repr(exc)
        finally:
            outcome["done"] = time.time()
            conn.close()

    started = time.time()
    thread = threading.Thread(target=classify)
    thread.start()
    while "sent" not in outcome and thread.is_alive():
        time.sleep(0.01)
    down = subprocess.run(
        [*COMPOSE, "down", "--timeout", "30"], capture_output=True, text=True, timeout=120
    )
    thread.join(timeout=120)
    exit_code = waiter.communicate(timeout=60)[0].strip()

    assert down.returncode == 0, down.stderr
    assert "error" not in outcome, outcome["error"]
    assert outcome["status"] == 200, outcome["body"][:500]
    results = json.loads(outcome["body"])["results"]
    assert [r["filename"] for r in results] == names
    assert all(r["predictions"][0]["label"] in CAT_LABELS for r in results)
    # Otherwise the request ended before the signal and proved nothing about draining.
    [sigterm] = _sigterm_times(container, since=started)
    print(
        f"request sent at +{outcome['sent'] - started:.2f}s, SIGTERM at +{sigterm - started:.2f}s,"
        f" response at +{outcome['done'] - started:.2f}s; exit code {exit_code}"
    )
    assert outcome["done"] > sigterm, (
        f"the response came {sigterm - outcome['done']:.2f}s before SIGTERM: make it slower"
    )
    assert exit_code == "0"
