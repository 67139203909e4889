"""`cnnserve quantize` on real models, calibrated and checked on real images (small sets, so
that it runs in seconds; the committed figures come from the full runs of `make quantize`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from testkit import CNNSERVE, MODELS

from model_export.datasets import load_fashion_mnist
from model_export.quantize import QuantizeOptions, quantize_model
from model_export.quantize_errors import QuantizationError, QuantizationRefusedError
from model_export.repository import precision, record_version_facts
from service.graph import describe_layers
from service.model_card import load_card
from service.runtime import ModelRuntime, SessionConfig

# Small but real: 64 calibration images, 500 test images, one variant, two timing rounds.
QUICK = QuantizeOptions(
    variants=("u8s8-pc-rr",),
    calibration_size=64,
    eval_size=500,
    views=2,
    eval_views=1,
    latency_rounds=2,
    debug_images=4,
    recover_layers=2,
    recover_variants=1,
)
# Feature maps of an INT8 layer against FP32's on the same image: same direction (cosine)
# and no value off by more than this share of the FP32 map's largest magnitude.
MAP_COSINE, MAP_MAX_ERROR = 0.99, 0.10


def _copy(model: str, tmp_path: Path) -> Path:
    """A repository with ``model`` as it was before quantization: version 1 (FP32) only."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS / model, repo / model, ignore=lambda _, names: _later(names))
    card_path = repo / model / "model.json"
    card = json.loads(card_path.read_text())
    card.pop("default_version", None)
    card["versions"] = {"1": card.get("versions", {}).get("1", {})}
    card_path.write_text(json.dumps(card))
    return repo


def _later(names: list[str]) -> list[str]:
    return [name for name in names if name.isdigit() and name != "1"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CNNSERVE), "quantize", *args], capture_output=True, text=True, timeout=300
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def resnet_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of resnet-fashion with an INT8 version 2 made by quantize_model."""
    repo = _copy("resnet-fashion", tmp_path_factory.mktemp("q"))
    result = quantize_model("resnet-fashion", model_dir=repo, options=QUICK)
    assert result.version == "2"
    return repo / "resnet-fashion"


def test_version_facts_are_merged_and_default_to_fp32(tmp_path: Path) -> None:
    root = tmp_path / "resnet-fashion"
    root.mkdir()
    card = json.loads((MODELS / "resnet-fashion" / "model.json").read_text())
    (root / "model.json").write_text(json.dumps(card))
    assert precision(card, "3") == "fp32"  # no facts: FP32
    record_version_facts(root, "3", {"precision": "int8", "source_version": "1"})
    record_version_facts(root, "3", {"calibration": {"temperature": 1.5}})
    updated = json.loads((root / "model.json").read_text())
    assert precision(updated, "3") == "int8" and precision(updated, "1") == "fp32"
    assert updated["versions"]["3"]["calibration"] == {"temperature": 1.5}  # merged, kept
    assert updated["versions"]["1"] == card["versions"]["1"]  # other versions untouched
    assert {k: v for k, v in updated.items() if k != "versions"} == {
        k: v for k, v in card.items() if k != "versions"
    }


def test_int8_version_is_written_with_its_measured_facts(resnet_int8: Path) -> None:
    card = json.loads((resnet_int8 / "model.json").read_text())
    facts = card["versions"]["2"]
    q = facts["quantization"]
    assert facts["precision"] == "int8" and facts["source_version"] == "1"
    assert precision(card, "1") == "fp32"
    assert q["format"] == "QDQ" and q["variant"] == "u8s8-pc-rr" and q["per_channel"]
    assert q["calibration"]["images"] == 64
    assert "validation split" in q["calibration"]["source"]
    checked = q["verification"]
    assert checked["images"] == 500 and checked["max_drop_points"] == 0.5
    assert checked["drop_points"] <= 0.5 and checked["top1_agreement"] >= 0.95
    fp32, int8 = checked["accuracy_fp32"], checked["accuracy_int8"]
    assert checked["drop_points"] == pytest.approx((fp32 - int8) * 100, abs=0.01)
    assert set(q["ms_per_image"]["int8"]) == {"1", "32"}
    assert q["layers_adding_most_error"] and q["measured_on"]["onnxruntime"]
    assert q["command"].startswith("cnnserve quantize resnet-fashion")
    # FP32 stays as it was; the rest of model.json too.
    assert (resnet_int8 / "1" / "model.onnx").read_bytes() == (
        MODELS / "resnet-fashion" / "1" / "model.onnx"
    ).read_bytes()
    original = json.loads((MODELS / "resnet-fashion" / "model.json").read_text())
    assert {k: v for k, v in card.items() if k not in ("versions", "default_version")} == {
        k: v for k, v in original.items() if k not in ("versions", "default_version")
    }
    assert "default_version" not in card  # quantize_model alone makes nothing the default
    assert card["versions"]["1"] == original["versions"]["1"]  # version 1's facts kept
    ops = {node.op_type for node in onnx.load(str(resnet_int8 / "2" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_int8_accuracy_recomputed_from_the_file(resnet_int8: Path) -> None:
    from model_export.quantize_measure import predictions, session

    card = json.loads((resnet_int8 / "model.json").read_text())
    test = load_fashion_mnist().test
    x = ((test.images[:500] / 255.0 - 0.2863) / 0.3532).astype(np.float32)[:, None]
    predicted = predictions(session(resnet_int8 / "2" / "model.onnx"), x)
    accuracy = float(np.mean(predicted == test.labels[:500]))
    assert accuracy == card["versions"]["2"]["quantization"]["verification"]["accuracy_int8"]


def test_int8_layers_keep_fp32_names_fields_and_feature_maps(resnet_int8: Path) -> None:
    fp32_proto = onnx.load(str(resnet_int8 / "1" / "model.onnx"))
    int8_proto = onnx.load(str(resnet_int8 / "2" / "model.onnx"))
    fp32 = {layer.name: layer for layer in describe_layers(fp32_proto)}
    int8 = {layer.name: layer for layer in describe_layers(int8_proto)}
    # No quantize/dequantize step is a layer; every INT8 layer is an FP32 layer, and the
    # only FP32 layers missing are the ReLUs the quantizer folded into the layer before.
    assert not {layer.op_type for layer in int8.values()} & {"QuantizeLinear", "DequantizeLinear"}
    assert set(int8) <= set(fp32)
    assert {fp32[name].op_type for name in set(fp32) - set(int8)} == {"Relu"}
    assert len(int8) == len(fp32) - 13  # resnet-fashion has 13 ReLUs
    for name, layer in int8.items():
        assert (layer.op_type, layer.output_shape) == (fp32[name].op_type, fp32[name].output_shape)
        assert layer.receptive_field == fp32[name].receptive_field, name
    card = load_card(resnet_int8 / "model.json")
    config = SessionConfig(providers="cpu", intra_op_threads=1)
    runtimes = [
        ModelRuntime("resnet-fashion", v, resnet_int8 / v / "model.onnx", card, config)
        for v in ("1", "2")
    ]
    images = load_fashion_mnist().test.images[:3]
    for image in ((images / 255.0 - 0.2863) / 0.3532).astype(np.float32)[:, None]:
        for name in ("conv1", "block3.conv2", "block6.add"):
            layers = [r.layer(name) for r in runtimes]
            assert None not in layers, name
            a, b = (
                r.feature_maps(image, [layer])[0] for r, layer in zip(runtimes, layers, strict=True)
            )
            assert a.shape == b.shape and b.dtype == np.float32
            cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
            assert cosine >= MAP_COSINE, name
            assert np.abs(a - b).max() <= MAP_MAX_ERROR * np.abs(a).max(), name


def test_a_second_run_quantizes_the_fp32_version_again(resnet_int8: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(resnet_int8, repo / "resnet-fashion")
    with pytest.raises(QuantizationError, match="version 2 is already int8"):
        quantize_model("resnet-fashion", model_dir=repo, options=QuantizeOptions(version="2"))
    with pytest.raises(QuantizationError, match="no version 7"):
        quantize_model("resnet-fashion", model_dir=repo, options=QuantizeOptions(version="7"))


def test_garbage_calibration_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """One black image as the calibration set: every range is wrong, accuracy collapses."""
    repo = _copy("resnet-fashion", tmp_path)
    black = tmp_path / "black"
    black.mkdir()
    from PIL import Image

    Image.new("L", (28, 28), 0).save(black / "black.png")
    before = _snapshot(repo)
    result = _cli(
        "resnet-fashion",
        "--images",
        str(black),
        "--variant",
        "u8s8-pc-rr",
        "--views",
        "1",
        "--eval-size",
        "300",
        "--latency-rounds",
        "1",
        "--model-dir",
        str(repo),
    )
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: resnet-fashion: no INT8 model within the bounds")
    assert "nothing written" in message and "more than --max-drop 0.5" in message
    assert "accuracy drops" in message and "Traceback" not in result.stderr
    assert _snapshot(repo) == before


def test_an_impossible_bound_is_refused_with_the_measured_figures(tmp_path: Path) -> None:
    repo = _copy("resnet-fashion", tmp_path)
    options = replace(QUICK, min_agreement=1.0, recover_layers=1)
    with pytest.raises(QuantizationRefusedError, match=r"less than --min-agreement 1\.0") as caught:
        quantize_model("resnet-fashion", model_dir=repo, options=options)
    assert 0.9 < caught.value.measured["confident_agreement"] < 1.0
    assert sorted(p.name for p in (repo / "resnet-fashion").iterdir() if p.is_dir()) == ["1"]


def test_an_imported_model_is_calibrated_on_a_folder_of_photos(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """resnet-fashion brought in with `cnnserve import-onnx` under a new name: no dataset in
    its card, so the photos calibrate it and agreement with FP32 is what is checked."""
    repo = tmp_path / "models"
    labels = tmp_path / "labels.txt"
    labels.write_text((MODELS / "resnet-fashion" / "labels.txt").read_text())
    source = MODELS / "resnet-fashion" / "1" / "model.onnx"
    imported = subprocess.run(
        [str(CNNSERVE), "import-onnx", str(source), "--name", "imported", "--labels", str(labels),
         "--color", "grey", "--mean", "0.2863", "--std", "0.3532", "--resize", "stretch",
         "--model-dir", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        (folder / f"{name}.png").write_bytes(photos[name])
    (folder / "notes.txt").write_text("not an image")
    result = _cli(
        "imported",
        "--images",
        str(folder),
        "--variant",
        "u8s8-pc-rr",
        "--views",
        "3",
        "--eval-views",
        "1",
        "--latency-rounds",
        "2",
        "--model-dir",
        str(repo),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["version"] == "2" and summary["accuracy_int8"] is None
    card = json.loads((repo / "imported" / "model.json").read_text())
    assert card["default_version"] == "1"  # without --make-default the FP32 one stays served
    facts = card["versions"]["2"]
    calibration = facts["quantization"]["calibration"]
    assert calibration["images"] == 9 and calibration["skipped_files"] == ["notes.txt"]
    checked = facts["quantization"]["verification"]
    rows = {row["image"]: row for row in checked["per_photo"]}
    assert "chelsea" in rows and "mine/chelsea.png" in rows and "flower" in rows
    assert rows["chelsea"]["in_calibration"] and not rows["flower"]["in_calibration"]
    assert checked["held_out_photos"] == checked["photos"] - 6  # 3 shipped + 3 copies
    assert checked["confident_agreement"] >= 0.9
    assert "does not show accuracy" in checked["what_it_shows"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "no model 'nope'"),
        (("resnet-fashion", "--variant", "u4s4"), "unknown variant(s) u4s4"),
        (("resnet-fashion", "--dataset", "cifar-10"), "unknown dataset 'cifar-10'"),
        (("resnet-fashion", "--images", "/nonexistent"), "--images /nonexistent: not a folder"),
    ],
)
def test_cli_errors_are_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    repo = _copy("resnet-fashion", tmp_path)
    before = _snapshot(repo)
    result = _cli(*args, "--model-dir", str(repo))
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(repo) == before


def test_cli_reads_the_model_dir_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "CNNSERVE_MODEL_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(CNNSERVE), "quantize", "resnet-fashion"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert f"no model 'resnet-fashion' in {tmp_path}" in result.stderr


def test_a_layer_kept_in_fp32_really_runs_in_fp32(tmp_path: Path) -> None:
    """ONNX Runtime quantizes a lone float Conv between quantized neighbours itself; the
    command keeps the Conv feeding it in FP32 too, and both run as float Conv."""
    import onnxruntime as ort

    repo = _copy("resnet-fashion", tmp_path)
    options = replace(QUICK, keep_fp32=("block3.conv2",))
    result = quantize_model("resnet-fashion", model_dir=repo, options=options)
    kept = {k["node"]: k["why"] for k in result.facts["quantization"]["kept_fp32"]}
    assert kept["block3.conv2"] == "asked for with --keep-fp32"
    assert kept["block3.conv1"].startswith("kept with block3.conv2")
    session_options = ort.SessionOptions()
    session_options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(result.path), session_options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("Conv") == 2 and ops.count("QLinearConv") == 13  # 15 Convs in all


@pytest.mark.slow  # the report scores both versions on the test set, on one thread
def test_models_report_has_a_row_per_version_with_its_precision(resnet_int8: Path) -> None:
    from model_export.report import measure, to_markdown

    rows = measure(resnet_int8.parent, runs=3, runs_batch32=1, test_images=2000)
    assert [(r["version"], r["precision"]) for r in rows] == [("1", "fp32"), ("2", "int8")]
    fp32, int8 = rows
    assert int8["onnx_bytes"] < fp32["onnx_bytes"] / 2  # int8 weights
    assert abs(fp32["test_accuracy"] - int8["test_accuracy"]) <= 0.005
    assert int8["cpu_ms_per_image"] > 0 and int8["cpu_ms_per_image_batch32"] > 0
    table = to_markdown(rows)
    assert "| precision |" in table and "| `resnet-fashion` | 2 | INT8 | fashion-mnist |" in table


def test_a_model_int8_does_not_speed_up_is_refused(tmp_path: Path) -> None:
    """LeNet-5 is too small to gain: the quantize/dequantize steps cost more than they save
    (about 0.5x here), so there is no INT8 version to write."""
    repo = _copy("lenet5-fashion", tmp_path)
    with pytest.raises(QuantizationRefusedError, match="none is faster than FP32 on this CPU"):
        quantize_model("lenet5-fashion", model_dir=repo, options=replace(QUICK, latency_rounds=5))
    assert sorted(p.name for p in (repo / "lenet5-fashion").iterdir() if p.is_dir()) == ["1"]
