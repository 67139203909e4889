"""The `cnnserve train`, `export`, `calibrate`, `import-pretrained`, `import-onnx` and
`quantize` commands.

Only typer is imported here: torch and onnx are imported inside the commands, so the
client-only install can still build the CLI and show a clear message when torch is missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

ModelDir = Annotated[
    Path | None,
    typer.Option(help="the model repository; default: CNNSERVE_MODEL_DIR, else models"),
]
TRAIN_EXTRA_HINT = "this command needs the train extra: pip install 'cnnserve[train,serve,cpu]'"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise _fail(TRAIN_EXTRA_HINT) from None


def train(
    arch: Annotated[str, typer.Option(help="lenet5, vggnet or resnet")],
    dataset: Annotated[str, typer.Option(help="fashion-mnist or mnist-5k")] = "fashion-mnist",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    seed: int = 0,
    augment: Annotated[bool, typer.Option(help="random shifts and flips")] = True,
    patience: Annotated[int, typer.Option(min=1, help="early-stopping patience")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="run folder name")] = None,
    dry_run: Annotated[bool, typer.Option(help="a few batches of one epoch")] = False,
) -> None:
    """Train a CNN and write a run folder (checkpoint, metrics.json, curves.png)."""
    _require_torch()
    from model_export.errors import ExportPipelineError
    from model_export.training import TrainConfig
    from model_export.training import train as run_training

    config = TrainConfig(
        arch=arch,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        augment=augment,
        patience=patience,
        device=device,
        dry_run=dry_run,
    )
    try:
        result = run_training(config, runs_dir=runs_dir, run_name=name)
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "best_epoch": result.best_epoch,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
            }
        )
    )


def _echo_written(summary: dict[str, Any]) -> None:
    """Print what was written (JSON on stdout) and say on stderr which version requests that
    name none will get: a new version is not served by default when model.json pins another
    (``default_version``), and a running server serves it only once it loads it again."""
    from model_export.repository import served_default

    root = Path(summary["path"]).parent.parent
    name, version, default = root.name, summary["version"], served_default(root)
    typer.echo(json.dumps(summary | {"served_by_default": default == version}))
    if default != version:
        typer.echo(
            f"note: {name} version {version} written; requests naming no version still get "
            f"version {default} (model.json's default_version): ask for ?version={version}, "
            "or change default_version",
            err=True,
        )
    elif version != "1":
        typer.echo(
            f"note: {name} version {version} is now the one requests naming no version get, "
            f"once the server loads it (a restart, or POST /v2/repository/models/{name}/load)",
            err=True,
        )


def export(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `cnnserve train`")],
    name: Annotated[str, typer.Option(help="model name in the repository")],
    model_dir: ModelDir = None,
    opset: Annotated[int, typer.Option(min=17)] = 17,
    calibrate: Annotated[
        bool, typer.Option(help="fit the temperature and OOD statistics (cnnserve calibrate)")
    ] = True,
) -> None:
    """Export a run to ONNX as the next version of NAME, verified against PyTorch, then
    calibrate it."""
    _require_torch()
    from model_export.errors import ExportPipelineError
    from model_export.export import export_run
    from model_export.repository import default_model_dir

    try:
        result = export_run(
            run_dir,
            name=name,
            model_dir=model_dir or default_model_dir(),
            opset=opset,
            calibrate=calibrate,
        )
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    _echo_written(result.to_json())


def calibrate(
    name: Annotated[str, typer.Argument(help="a model in the repository")],
    dataset: Annotated[
        str | None, typer.Option(help="its training data: fashion-mnist or mnist-5k")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="a folder of in-distribution images (imported models)")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="with --images: lines 'file name<TAB>class'")
    ] = None,
    version: Annotated[str | None, typer.Option(help="default: the highest")] = None,
    flag_rate: Annotated[
        float, typer.Option(min=0.001, max=0.5, help="share of in-distribution images flagged")
    ] = 0.045,
    model_dir: ModelDir = None,
) -> None:
    """Fit a temperature and out-of-distribution statistics for a model in the repository.

    --dataset for a model trained here; --images DIR [--labels FILE] for an imported one;
    neither: the dataset model.json names, else the energy score with no threshold.
    """
    from model_export.errors import ExportPipelineError
    from model_export.repository import default_model_dir

    if dataset and images:
        raise _fail("give --dataset or --images, not both")
    if labels and not images:
        raise _fail("--labels goes with --images")
    try:
        facts = _calibrate(
            name, dataset, images, labels, version, flag_rate, model_dir or default_model_dir()
        )
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(facts))


def _calibrate(
    name: str,
    dataset: str | None,
    images: Path | None,
    labels: Path | None,
    version: str | None,
    flag_rate: float,
    model_dir: Path,
) -> dict[str, object]:
    from model_export.calibrate import calibrate_dataset
    from model_export.calibrate_images import calibrate_images, record_no_statistics
    from model_export.datasets import DATASETS

    if images is not None:
        return calibrate_images(
            name,
            images=images,
            labels=labels,
            model_dir=model_dir,
            version=version,
            flag_rate=flag_rate,
        )
    if dataset is None:
        card_path = model_dir / name / "model.json"
        named = json.loads(card_path.read_text()).get("dataset") if card_path.is_file() else None
        dataset = named if named in DATASETS else None
    if dataset is None:
        return record_no_statistics(name, model_dir=model_dir, version=version)
    return calibrate_dataset(
        name, dataset=dataset, model_dir=model_dir, version=version, flag_rate=flag_rate
    )


def import_pretrained(
    name: Annotated[str, typer.Argument(help="mobilenetv2-imagenet")],
    model_dir: ModelDir = None,
) -> None:
    """Build a pretrained network in PyTorch, load its weights and export it, verified."""
    _require_torch()
    from model_export.errors import ExportPipelineError
    from model_export.pretrained import import_pretrained as run_import
    from model_export.repository import default_model_dir

    try:
        result = run_import(name, model_dir=model_dir or default_model_dir())
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    _echo_written(result.to_json())


def import_onnx(
    path: Annotated[Path, typer.Argument(help="an ONNX image classifier")],
    name: Annotated[str, typer.Option(help="model name in the repository")],
    labels: Annotated[Path, typer.Option(help="a text file, one class name per line")],
    mean: Annotated[list[float] | None, typer.Option(help="per channel, repeat for RGB")] = None,
    std: Annotated[list[float] | None, typer.Option(help="per channel, repeat for RGB")] = None,
    size: Annotated[
        tuple[int, int] | None, typer.Option(help="H W; default from the model")
    ] = None,
    color: Annotated[str, typer.Option(help="rgb or grey")] = "rgb",
    resize: Annotated[str, typer.Option(help="stretch or center-crop")] = "center-crop",
    resize_shorter: Annotated[int | None, typer.Option(help="shorter side before the crop")] = None,
    output: Annotated[
        str,
        typer.Option(
            help="auto (a graph ending in Softmax gives probabilities), logits or probabilities"
        ),
    ] = "auto",
    layout: Annotated[
        str, typer.Option(help="auto (where the channel count sits), nchw or nhwc")
    ] = "auto",
    model_dir: ModelDir = None,
) -> None:
    """Check a user's ONNX classifier and copy it into the repository with a model.json
    (works from the install `make serve` makes: no torch)."""
    from model_export.errors import ExportPipelineError
    from model_export.onnx_import import ImportSpec, import_onnx_model

    spec = ImportSpec(
        color=color,
        mean=mean,
        std=std,
        size=size,
        resize=resize,
        resize_shorter=resize_shorter,
        output_kind=output,
        layout=layout,
    )
    try:
        result = import_onnx_model(
            path, name=name, labels_path=labels, spec=spec, model_dir=model_dir
        )
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    _echo_written(result)


def quantize(
    name: Annotated[str, typer.Argument(help="a model in the repository")],
    version: Annotated[str | None, typer.Option(help="FP32 version; default the highest")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="calibrate on its validation split, test on its test split")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="a folder of images to calibrate on instead")
    ] = None,
    max_drop: Annotated[
        float, typer.Option(help="most accuracy points INT8 may lose (labelled data)")
    ] = 0.5,
    min_agreement: Annotated[
        float, typer.Option(help="least top-1 agreement with FP32 where FP32 is confident")
    ] = 0.9,
    variant: Annotated[
        list[str] | None, typer.Option(help="measure only these (repeat); default all eight")
    ] = None,
    keep_fp32: Annotated[
        list[str] | None, typer.Option(help="a node to keep in FP32 (repeat)")
    ] = None,
    calibration_method: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = (
        "minmax"
    ),
    calibration_size: Annotated[int, typer.Option(min=1, help="images from the dataset")] = 1000,
    eval_size: Annotated[
        int | None, typer.Option(min=1, help="first test images; default all")
    ] = None,
    views: Annotated[int, typer.Option(min=1, help="calibration views per photo")] = 8,
    eval_views: Annotated[int, typer.Option(min=1, help="evaluation views per photo")] = 8,
    latency_rounds: Annotated[int, typer.Option(min=1)] = 15,
    make_default: Annotated[
        bool,
        typer.Option(
            help="serve the INT8 version when a request names none (else: only when named)"
        ),
    ] = False,
    model_dir: ModelDir = None,
) -> None:
    """Quantize NAME to INT8 as its next version, measured against FP32 before it is written.

    Exits 1, writing nothing, when accuracy drops more than --max-drop points or INT8
    agrees with FP32 less than --min-agreement. Needs onnx and onnxruntime, not torch. The
    INT8 version is served when named (?version=), or by default with --make-default.
    """
    try:
        from model_export.errors import ExportPipelineError
        from model_export.quantize import QuantizeOptions, quantize_model
    except ImportError as exc:
        raise _fail(
            f"quantize needs onnxruntime, onnx and pillow ({exc.name} is missing): "
            "pip install 'cnnserve[serve,cpu]'"
        ) from None
    from model_export.quantize_variants import VARIANTS
    from model_export.repository import default_model_dir, served_default, set_default_version

    progress = logging.getLogger("model_export.quantize")  # one line per step, on stderr
    if not progress.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
    options = QuantizeOptions(
        version=version,
        dataset=dataset,
        images=images,
        max_drop=max_drop,
        min_agreement=min_agreement,
        variants=tuple(variant or VARIANTS),
        keep_fp32=tuple(keep_fp32 or ()),
        calibration_method=calibration_method,
        calibration_size=calibration_size,
        eval_size=eval_size,
        views=views,
        eval_views=eval_views,
        latency_rounds=latency_rounds,
    )
    root = model_dir or default_model_dir()
    serving = served_default(root / name) if (root / name / "model.json").is_file() else None
    try:
        result = quantize_model(name, model_dir=root, options=options)
    except ExportPipelineError as exc:
        raise _fail(str(exc)) from None
    # The new version is the highest: pinned, the one served before stays the default.
    chosen = result.version if make_default or serving is None else serving
    set_default_version(root / name, chosen)
    typer.echo(json.dumps(result.to_json() | {"default": make_default}))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `cnnserve` console script."""
    app.command("train")(train)
    app.command("export")(export)
    app.command("calibrate")(calibrate)
    app.command("import-pretrained")(import_pretrained)
    app.command("import-onnx")(import_onnx)
    app.command("quantize")(quantize)
