"""Importing a pretrained network and a user's ONNX classifier into a repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from testkit import CNNSERVE

from model_export.errors import ImportModelError
from model_export.onnx_import import ImportSpec, import_onnx_model
from model_export.pretrained import import_pretrained
from model_export.repository import set_default_version

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET = MODELS / "lenet5-fashion" / "1" / "model.onnx"
LENET_SPEC = ImportSpec(color="grey", mean=[0.2863], std=[0.3532], resize="stretch")


@pytest.fixture
def labels10(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text((MODELS / "lenet5-fashion" / "labels.txt").read_text())
    return path


@pytest.mark.slow
def test_mobilenetv2_import_is_verified_and_carries_imagenet_labels(tmp_path: Path) -> None:
    result = import_pretrained("mobilenetv2-imagenet", model_dir=tmp_path)
    assert result.version == "1" and result.max_abs_diff < 1e-4
    card = json.loads((tmp_path / "mobilenetv2-imagenet" / "model.json").read_text())
    assert card["labels"][285] == "Egyptian cat" and len(card["labels"]) == 1000
    assert card["input"] | {"mean": None, "std": None} == {
        "name": "input",
        "color_mode": "RGB",
        "size": [224, 224],
        "mean": None,
        "std": None,
        "resize": "center-crop",
        "resize_shorter": 256,
        "layout": "NCHW",
        "dtype": "float32",
    }


def test_import_onnx_copies_a_checked_classifier(tmp_path: Path, labels10: Path) -> None:
    summary = import_onnx_model(
        LENET, name="lenet-again", labels_path=labels10, spec=LENET_SPEC, model_dir=tmp_path
    )
    assert summary["version"] == "1"
    root = tmp_path / "lenet-again"
    assert (root / "1" / "model.onnx").read_bytes() == LENET.read_bytes()
    card = json.loads((root / "model.json").read_text())
    assert card["input"]["size"] == [28, 28] and card["input"]["color_mode"] == "L"
    again = import_onnx_model(
        LENET, name="lenet-again", labels_path=labels10, spec=LENET_SPEC, model_dir=tmp_path
    )
    assert again["version"] == "2"


def _two_input_model(path: Path) -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["out"])], "g", [a, b], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_import_onnx_refuses_what_cannot_be_served(tmp_path: Path, labels10: Path) -> None:
    two = tmp_path / "two.txt"
    two.write_text("cat\ndog\n")
    with pytest.raises(ImportModelError, match=r"has 10 classes but .* has 2 labels"):
        import_onnx_model(LENET, name="bad", labels_path=two, spec=LENET_SPEC, model_dir=tmp_path)
    with pytest.raises(ImportModelError, match="has 1 channels; --color rgb gives 3"):
        import_onnx_model(
            LENET, name="bad", labels_path=labels10, spec=ImportSpec(), model_dir=tmp_path
        )
    with pytest.raises(ImportModelError, match="2 inputs"):
        import_onnx_model(
            _two_input_model(tmp_path / "two.onnx"),
            name="bad",
            labels_path=labels10,
            spec=ImportSpec(),
            model_dir=tmp_path,
        )
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ImportModelError, match="does not load in ONNX Runtime"):
        import_onnx_model(
            garbage, name="bad", labels_path=labels10, spec=ImportSpec(), model_dir=tmp_path
        )
    with pytest.raises(ImportModelError, match="not a valid model name"):
        import_onnx_model(
            LENET, name="../escape", labels_path=labels10, spec=LENET_SPEC, model_dir=tmp_path
        )
    assert not (tmp_path / "bad").exists()


def test_import_onnx_cli_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    two = tmp_path / "two.txt"
    two.write_text("cat\ndog\n")
    cli = Path(sys.executable).parent / "cnnserve"
    result = subprocess.run(
        [
            str(cli),
            "import-onnx",
            str(LENET),
            "--name",
            "x",
            "--labels",
            str(two),
            "--color",
            "grey",
            "--model-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: output 'logits' has 10 classes but {two} has 2 labels"
    )


def test_import_onnx_needs_no_photo_package_and_writes_where_the_server_reads(
    tmp_path: Path, labels10: Path
) -> None:
    """The install `make serve` makes has neither scikit-image nor scikit-learn: the model is
    checked on the photos the service ships. With no --model-dir, the model goes where the
    server reads (CNNSERVE_MODEL_DIR), not into ./models."""
    served = tmp_path / "served"
    script = (
        "import sys\n"
        "sys.modules['skimage'] = sys.modules['sklearn'] = None  # not installed\n"
        "from cnn_client.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "import-onnx",
            str(LENET),
            "--name",
            "lenet-served",
            "--labels",
            str(labels10),
            "--color",
            "grey",
            "--mean",
            "0.2863",
            "--std",
            "0.3532",
            "--resize",
            "stretch",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "CNNSERVE_MODEL_DIR": str(served)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["served_by_default"] is True
    assert json.loads(result.stdout)["version"] == "1"
    assert (served / "lenet-served" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("pinned", [False, True])
def test_a_new_version_says_whether_it_is_served_by_default(
    tmp_path: Path, labels10: Path, pinned: bool
) -> None:
    """A second import becomes the default (the highest) unless model.json pins another,
    and the command says which (issue #21: it used to change what serves without a word)."""
    args = [str(LENET), "--name", "twice", "--labels", str(labels10), "--color", "grey"]
    args += ["--mean", "0.2863", "--std", "0.3532", "--resize", "stretch"]
    args += ["--model-dir", str(tmp_path)]
    cli = [str(CNNSERVE), "import-onnx", *args]
    assert subprocess.run(cli, capture_output=True, timeout=120).returncode == 0
    if pinned:
        set_default_version(tmp_path / "twice", "1")
    second = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["version"] == "2" and summary["served_by_default"] is not pinned
    if pinned:
        assert "requests naming no version still get version 1" in second.stderr
        assert json.loads((tmp_path / "twice" / "model.json").read_text())["default_version"] == "1"
    else:
        assert "version 2 is now the one requests naming no version get" in second.stderr
