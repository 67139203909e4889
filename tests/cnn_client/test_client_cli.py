"""The `cnnserve` client commands, run through main() against a fake server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_fakes import explanation_body
from PIL import Image

from cnn_client.cli import main


@dataclass
class Run:
    code: int
    out: str
    err: str


CliRunner = Callable[..., Run]


@pytest.fixture
def cnnserve(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    def run(*args: str | Path) -> Run:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        code = exited.value.code
        return Run(code if isinstance(code, int) else 0, captured.out, captured.err)

    return run


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for name, value in (("boot.png", 10), ("bag.png", 200)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(buffer, format="PNG")
        paths.append(tmp_path / name)
        paths[-1].write_bytes(buffer.getvalue())
    return paths


def _assert_one_error_line(run: Run, *fragments: str) -> None:
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in run.err + run.out


def test_classify_json(cnnserve: CliRunner, stub_server: Any, images: list[Path]) -> None:
    run = cnnserve(
        "classify", *images, "--model", "lenet5-fashion", "--url", stub_server.url, "--json"
    )
    assert run.code == 0, run.err
    document = json.loads(run.out)
    assert document["model"] == "lenet5-fashion"
    assert [r["filename"] for r in document["results"]] == ["boot.png", "bag.png"]
    assert all(len(r["predictions"]) == 5 for r in document["results"])
    first = document["results"][0]["predictions"][0]
    assert set(first) == {"index", "label", "probability"}
    assert first["label"] == stub_server.fake.LABELS[first["index"]]
    [request] = stub_server.fake.requests
    assert request.url.params["top_k"] == "5"


def test_classify_table(cnnserve: CliRunner, stub_server: Any, images: list[Path]) -> None:
    run = cnnserve(
        "classify", *images, "-m", "lenet5-fashion", "--top-k", "2", "--url", stub_server.url
    )
    assert run.code == 0, run.err
    assert "boot.png" in run.out and "bag.png" in run.out
    assert "lenet5-fashion" in run.out
    assert stub_server.fake.requests[0].url.params["top_k"] == "2"
    label_count = sum(run.out.count(label) for label in stub_server.fake.LABELS)
    assert label_count >= 4


def test_url_and_api_key_come_from_the_environment(
    cnnserve: CliRunner, stub_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNSERVE_URL", stub_server.url)
    monkeypatch.setenv("CNNSERVE_API_KEY", "from-env")
    run = cnnserve("models", "--json")
    assert run.code == 0, run.err
    assert stub_server.fake.requests[0].headers["authorization"] == "Bearer from-env"
    model = json.loads(run.out)["models"][0]
    assert model["name"] == "lenet5-fashion"
    assert model["training"] == {"test_accuracy": 0.9}  # unknown fields pass through


def test_models_table(cnnserve: CliRunner, stub_server: Any) -> None:
    run = cnnserve("models", "--url", stub_server.url, "--api-key", "k")
    assert run.code == 0, run.err
    assert "lenet5-fashion" in run.out
    assert "│ CPU " in run.out
    assert stub_server.fake.requests[0].headers["authorization"] == "Bearer k"


def test_feature_maps_writes_the_png(
    cnnserve: CliRunner, stub_server: Any, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "grid.png"
    run = cnnserve(
        "feature-maps", images[0], "--model", "lenet5-fashion", "--layer", "conv1",
        "--out", out, "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert out.read_bytes() == stub_server.fake.PNG
    assert run.out.strip() == str(out)


def test_feature_maps_summary_json(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    run = cnnserve(
        "feature-maps", images[0], "-m", "lenet5-fashion", "-l", "conv1", "-l", "fc3",
        "--json", "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 0, run.err
    layers = json.loads(run.out)["layers"]
    assert [layer["name"] for layer in layers] == ["conv1", "fc3"]
    assert layers[0]["shape"] == [2, 3, 4]
    assert layers[0]["receptive_field"]["size"] == [5, 5]
    assert layers[0]["stats"] == {"min": -1.0, "max": 4.75, "mean": 1.875}


def test_feature_maps_out_takes_one_layer(
    cnnserve: CliRunner, stub_server: Any, images: list[Path], tmp_path: Path
) -> None:
    run = cnnserve(
        "feature-maps", images[0], "-m", "lenet5-fashion", "-l", "conv1", "-l", "fc3",
        "--out", tmp_path / "grid.png", "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 2
    _assert_one_error_line(run, "--out takes exactly one --layer")
    assert stub_server.fake.requests == []


def test_health(cnnserve: CliRunner, stub_server: Any) -> None:
    run = cnnserve("health", "--url", stub_server.url)
    assert (run.code, run.out.strip()) == (0, f"{stub_server.url}: live yes, ready yes")
    stub_server.fake.ready = False
    run = cnnserve("health", "--url", stub_server.url, "--json")
    assert run.code == 1
    assert json.loads(run.out) == {"url": stub_server.url, "live": True, "ready": False}


def test_server_errors_exit_1_with_one_line(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    run = cnnserve("classify", images[0], "--model", "nope", "--url", stub_server.url)
    assert run.code == 1
    _assert_one_error_line(run, "no such model", "404", "model_not_found")
    assert run.out == ""


def test_an_unreachable_server_exits_1_with_one_line(cnnserve: CliRunner) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = cnnserve("models", "--url", f"http://127.0.0.1:{port}")
    assert run.code == 1
    _assert_one_error_line(run, "could not reach the server", str(port))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["classify", "IMAGE"], "Missing option '--model'"),
        (["classify", "/no/such/image.png", "-m", "x"], "does not exist"),
        (["classify", "IMAGE", "-m", "x", "--top-k", "0"], "--top-k"),
        (["models", "--url", "ftp://somewhere"], "--url"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    cnnserve: CliRunner, images: list[Path], args: list[str], fragment: str
) -> None:
    run = cnnserve(*[str(images[0]) if arg == "IMAGE" else arg for arg in args])
    assert run.code == 2
    _assert_one_error_line(run, fragment)


def test_verbose_logs_retries(cnnserve: CliRunner, stub_server: Any) -> None:
    stub_server.fake.busy, stub_server.fake.retry_after = 1, "0"
    run = cnnserve("-v", "models", "--url", stub_server.url, "--json")
    assert run.code == 0, run.err
    assert "503, retry 1 of 3" in run.err
    assert len(stub_server.fake.requests) == 2


def test_help_lists_the_client_commands(cnnserve: CliRunner) -> None:
    run = cnnserve("--help")
    assert run.code == 0
    for command in ("classify", "feature-maps", "explain", "models", "health"):
        assert command in run.out


# Explanations ------------------------------------------------------------------------


def test_explain_table(cnnserve: CliRunner, stub_server: Any, images: list[Path]) -> None:
    run = cnnserve("explain", images[0], "--model", "lenet5-fashion", "--url", stub_server.url)
    assert run.code == 0, run.err
    facts = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in run.out.splitlines()
        if line.count("│") == 3
    }
    assert facts == {
        "image": "boot.png",
        "target": "Ankle boot (index 9)",
        "probability": "0.8750",
        "method": "occlusion (window 6, stride 2)",
        "heatmap": "3x4 cells of 6x6 px, every 2x2 px",
        "cached": "no (computed in 12 ms)",
    }
    assert dict(stub_server.fake.requests[0].url.params) == {
        "method": "occlusion",
        "format": "json",
    }


def test_explain_passes_every_option(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    run = cnnserve(
        "explain", images[0], "-m", "lenet5-fashion", "--method", "occlusion",
        "--target", "Ankle boot", "--window", "7", "--stride", "3", "--version", "2",
        "--json", "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert dict(stub_server.fake.requests[0].url.params) == {
        "method": "occlusion",
        "target": "Ankle boot",
        "window": "7",
        "stride": "3",
        "version": "2",
        "format": "json",
    }


def test_explain_json_is_the_servers_shape(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    run = cnnserve("explain", images[0], "-m", "lenet5-fashion", "--json", "--url", stub_server.url)
    assert run.code == 0, run.err
    assert json.loads(run.out) == explanation_body()


def test_explain_writes_the_overlay_png(
    cnnserve: CliRunner, stub_server: Any, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "overlay.png"
    run = cnnserve(
        "explain", images[0], "-m", "lenet5-fashion", "--out", out, "--url", stub_server.url
    )
    assert run.code == 0, run.err
    assert out.read_bytes() == stub_server.fake.PNG
    assert run.out.strip() == str(out)
    assert stub_server.fake.requests[0].url.params["format"] == "png"


@pytest.mark.parametrize("out", [False, True], ids=["json", "png"])
def test_explain_method_not_supported_exits_1_with_one_line(
    cnnserve: CliRunner, stub_server: Any, images: list[Path], tmp_path: Path, out: bool
) -> None:
    where = ["--out", str(tmp_path / "overlay.png")] if out else []
    run = cnnserve(
        "explain", images[0], "-m", "lenet5-fashion", "--method", "cam", *where,
        "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 1
    _assert_one_error_line(run, "cannot have cam", "400", "method_not_supported")
    assert run.out == ""
    assert not (tmp_path / "overlay.png").exists()


def test_models_table_says_which_models_each_method_explains(
    cnnserve: CliRunner, stub_server: Any
) -> None:
    run = cnnserve("models", "--url", stub_server.url)
    assert run.code == 0, run.err
    assert run.out.strip().splitlines()[-1].strip() == "explain: occlusion (lenet5-fashion)"


# Trust: out-of-distribution verdicts and raw probabilities ---------------------------

FLAGGED = {"score": 3.25, "threshold": 1.0, "flagged": True, "method": "mahalanobis"}
UNFLAGGED = {"score": 0.5, "threshold": 1.0, "flagged": False, "method": "energy"}


def test_classify_table_marks_flagged_images_only(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    stub_server.fake.ood = [UNFLAGGED, FLAGGED]
    run = cnnserve("classify", *images, "-m", "lenet5-fashion", "-k", "2", "--url", stub_server.url)
    assert run.code == 0, run.err
    marked = [line for line in run.out.splitlines() if "⚠" in line]
    assert len(marked) == 1 and "bag.png" in marked[0]
    # The note may wrap within its cell.
    assert "out of" in marked[0] and "(mahalanobis)" in run.out
    assert "calibrated" not in stub_server.fake.requests[0].url.params


def test_classify_table_is_unchanged_when_nothing_is_flagged(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    args = ("classify", *images, "-m", "lenet5-fashion", "--url", stub_server.url)
    plain = cnnserve(*args)
    stub_server.fake.ood = [UNFLAGGED, UNFLAGGED | {"threshold": None}]
    with_ood = cnnserve(*args)
    assert plain.code == with_ood.code == 0
    assert "⚠" not in with_ood.out and "note" not in with_ood.out
    assert plain.out == with_ood.out


def test_classify_json_carries_the_verdicts(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    stub_server.fake.ood = [FLAGGED, None]
    run = cnnserve("classify", *images, "-m", "lenet5-fashion", "--json", "--url", stub_server.url)
    assert run.code == 0, run.err
    first, second = json.loads(run.out)["results"]
    assert first["ood"] == FLAGGED
    assert "ood" not in second


def test_classify_raw_probabilities(
    cnnserve: CliRunner, stub_server: Any, images: list[Path]
) -> None:
    run = cnnserve(
        "classify", images[0], "-m", "lenet5-fashion", "--raw-probabilities",
        "--url", stub_server.url,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert stub_server.fake.requests[0].url.params["calibrated"] == "false"
