"""`make explain-report`: how good the service's explanations are, measured, with pictures.

The maps are the service's own: ``service.explain.METHODS`` run on a ``Subject`` built as
``service.explainer`` builds it, over the committed ``models/*/1/model.onnx`` loaded by
``service.runtime.ModelRuntime`` (the same sessions, classifier head and CAM feature
output), inputs made by ``service.preprocessing`` from each ``model.json``. Only the
scoring differs: in process, in large batches, instead of through the batcher.

Measured (``model_export.explain_metrics`` says how): the deletion AUC of each method
against random orders on Fashion-MNIST test images and on photos; the Spearman correlation
between the maps of each model and of a copy with re-initialised weights; the two-object
canvas of tests/service/test_explain.py; and what would move occlusion's AUC (``ceiling``).
The tables go between the ``explain-report`` markers of docs/explain.md, the figures under
docs/img/explain/ (``model_export.explain_pages``).

    python -m model_export.explain_report [--quick] [--fashion-images 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from model_export.datasets import load_fashion_mnist
from model_export.explain_metrics import (
    ImageResult,
    ModelResult,
    auc,
    deletion_curves,
    log_odds,
    random_orders,
    reinitialised,
    saliency_order,
    shuffled,
    spearman,
)
from model_export.explain_pages import (
    as_json,
    cpu_name,
    to_markdown,
    write_block,
    write_figures,
)
from model_export.photos import photo_paths
from service.batching import Batcher
from service.config import Settings
from service.explain import MAX_OCCLUDED, METHODS, Heatmap, Subject
from service.explainer import cam_grid, supported_methods
from service.head import Head
from service.model_card import InputSpec, load_card
from service.preprocessing import preprocess, to_tensor
from service.repository import ModelVersion
from service.runtime import ModelRuntime, SessionConfig, usable_cores

__all__ = ["Local", "evaluate", "main", "measure", "two_objects"]

FASHION = ("lenet5-fashion", "vggnet-fashion", "resnet-fashion")
MOBILENET = "mobilenetv2-imagenet"
SAMPLES = Path(__file__).resolve().parent.parent / "service" / "static" / "samples"
SAMPLE_PHOTOS = ("chelsea", "coffee", "motorcycle")
DUPLICATES = frozenset({"motorcycle_left"})  # the sample motorcycle's source
SEED = 0
TWO_OBJECTS = ("Egyptian cat", "espresso")
CEILING = {"log-odds": (False, True), "finest": (True, False), "finest, log-odds": (True, True)}


class Local:
    """A committed model, run in process the way the service runs it, scored in batches."""

    def __init__(self, path: Path, card_path: Path, *, threads: int) -> None:
        card = load_card(card_path)
        config = SessionConfig(providers="cpu", intra_op_threads=threads)
        runtime = ModelRuntime(card.name, "1", path, card, config)
        # cam_grid and supported_methods take a served version; its batcher stays idle.
        idle = Batcher(
            runtime.infer, name=card.name, max_batch_size=1, max_queue_delay_s=0.0, capacity=1
        )
        self.version = ModelVersion("1", runtime, idle)
        self.name, self.spec, self.labels = card.name, card.input, card.labels
        self.methods = supported_methods(self.version)
        # Inputs per ONNX Runtime call: 256 Fashion-MNIST images, 39 photos (~100 MB).
        self.chunk = max(1, min(256, 2_000_000 // (self.spec.size[0] * self.spec.size[1])))

    def close(self) -> None:
        self.version.batcher.close()

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's class scores (its first output) for a batch of its input."""
        runtime = self.version.runtime
        step = self.chunk
        return np.concatenate(
            [runtime.infer(batch[i : i + step])[0] for i in range(0, len(batch), step)]
        )

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes), calibrated as the data plane's are."""
        return self.version.runtime.trust.probabilities(self.outputs(batch))

    def explain(
        self,
        method: str,
        input_: np.ndarray,
        target: int | None = None,
        *,
        query: Mapping[str, str | None] | None = None,
        odds: bool = False,
    ) -> tuple[Heatmap, int]:
        """The method's heatmap and its target (None: the top class), from a ``Subject``
        made as ``service.explainer.Explainer._subject`` makes it; ``query``: parameters
        as a request gives them (default: none). ``odds``: the subject's scores are the
        target's log-odds, not its probability (what the service does not do)."""
        runtime = self.version.runtime
        maps: np.ndarray | None = None
        if METHODS[method].needs_cam:
            raw, maps = runtime.cam_features(input_)
            probs = runtime.trust.probabilities(raw[None])[0]
        else:
            probs = self.scores(input_[None])[0]
        chosen = int(np.argmax(probs)) if target is None else target
        head, kind, temperature = runtime.head, runtime.card.output_kind, runtime.trust.temperature

        def odds_of(batch: np.ndarray) -> np.ndarray:
            return log_odds(self.outputs(batch), kind, chosen, temperature=temperature)

        async def cam() -> tuple[np.ndarray, np.ndarray]:
            assert isinstance(head, Head) and maps is not None
            return head.weights, maps

        async def scores(batch: np.ndarray) -> np.ndarray:
            return odds_of(batch) if odds else self.scores(batch)

        start = odds_of(input_[None])[0] if odds else probs
        subject = Subject(
            input=input_,
            spec=self.spec,
            target=chosen,
            probability=float(start[chosen]),
            scores=scores,
            chunk=self.chunk,
            cam=cam if maps is not None else None,
            cam_grid=cam_grid(self.version),
        )
        parameters = METHODS[method].parameters(self.spec, query or {})

        async def run() -> Heatmap:
            return await METHODS[method].run(subject, parameters)

        return asyncio.run(run()), chosen


@contextlib.contextmanager
def _pair(model_dir: Path, name: str, *, threads: int) -> Iterator[tuple[Local, Local, int]]:
    """The model, a copy with re-initialised weights, and how many weights were redrawn."""
    path, card = model_dir / name / "1" / "model.onnx", model_dir / name / "model.json"
    proto, redrawn = reinitialised(onnx.load(str(path)), seed=SEED)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for companion in path.parent.iterdir():  # what the card names beside it (ood.npz)
            if companion.is_file() and companion.name != path.name:
                shutil.copy(companion, folder / companion.name)
        onnx.save(proto, str(folder / "model.onnx"))
        model = Local(path, card, threads=threads)
        stack.callback(model.close)
        random = Local(folder / "model.onnx", card, threads=threads)
        stack.callback(random.close)
        yield model, random, redrawn


def evaluate(
    model: Local,
    random: Local,
    inputs: list[tuple[str, np.ndarray]],
    *,
    orders: int,
    randomise: int,
) -> list[ImageResult]:
    """Each input explained by every method the model has (target: its top class); its
    deletion curves, and those of ``orders`` random pixel orders and ``orders`` shuffled maps
    per method; for the first ``randomise`` inputs, the rank correlation with the
    re-initialised copy's maps for the same target."""
    spec, results = model.spec, []
    size = spec.size[0] * spec.size[1]
    for index, (name, input_) in enumerate(tqdm(inputs, desc=model.name, unit="image")):
        rng = np.random.default_rng((SEED, index))
        heatmaps, target = {}, None
        for method in model.methods:
            heatmaps[method], target = model.explain(method, input_, target)
        assert target is not None
        maps = {m: h.pixels(spec.size) for m, h in heatmaps.items()}
        methods, count = model.methods, len(model.methods)
        everything = [saliency_order(maps[m], rng) for m in methods]
        everything += random_orders(size, orders, rng)
        everything += [
            saliency_order(shuffled(heatmaps[m], rng).pixels(spec.size), rng)
            for m in methods
            for _ in range(orders)
        ]
        curves = deletion_curves(model.scores, input_, spec, target, everything)
        areas = auc(curves)
        # The first point of every curve is the input as it is: the target's probability.
        result = ImageResult(name, input_, target, model.labels[target], float(curves[0, 0]))
        result.maps = maps
        baselines = {"random": slice(count, count + orders)} | {
            f"shuffled {m}": slice(count + (i + 1) * orders, count + (i + 2) * orders)
            for i, m in enumerate(methods)
        }
        for i, method in enumerate(methods):
            result.curves[method], result.auc[method] = curves[i], float(areas[i])
        for key, rows in baselines.items():
            result.curves[key], result.auc[key] = (
                curves[rows].mean(axis=0),
                float(areas[rows].mean()),
            )
        if index < randomise:
            for method in model.methods:
                heat, _ = random.explain(method, input_, target)
                result.random_maps[method] = heat.pixels(spec.size)
                result.spearman[method] = spearman(maps[method], result.random_maps[method])
        results.append(result)
    return results


def _finest(spec: InputSpec) -> dict[str, str | None]:
    """The smallest square window, at a stride of itself, whose copies a request may ask
    for (``service.explain.MAX_OCCLUDED``): 1 pixel at 28x28, 7 at 224x224."""
    side = math.ceil(math.sqrt(spec.size[0] * spec.size[1] / MAX_OCCLUDED))
    return {"window": str(side), "stride": str(side)}


def ceiling(model: Local, images: list[ImageResult]) -> None:
    """What would move occlusion's deletion AUC: occlusion at the finest window a request
    may ask for, on the target's log-odds instead of its probability (a change to the
    service), and both; scored like the rest (keys ``occlusion, <variant>``)."""
    spec = model.spec
    for index, image in enumerate(tqdm(images, desc=f"{model.name}, ceiling", unit="image")):
        rng = np.random.default_rng((SEED, index, 1))
        orders = []
        for finest, odds in CEILING.values():
            query = _finest(spec) if finest else None
            heat, _ = model.explain("occlusion", image.input, image.target, query=query, odds=odds)
            orders.append(saliency_order(heat.pixels(spec.size), rng))
        curves = deletion_curves(model.scores, image.input, spec, image.target, orders)
        for i, (variant, area) in enumerate(zip(CEILING, auc(curves), strict=True)):
            image.curves[f"occlusion, {variant}"] = curves[i]
            image.auc[f"occlusion, {variant}"] = float(area)


def _photo_inputs(spec: InputSpec, count: int) -> list[tuple[str, np.ndarray]]:
    """The service's three sample photos, then the other photos packages ship."""
    paths = {name: SAMPLES / f"{name}.jpg" for name in SAMPLE_PHOTOS}
    for name, path in photo_paths().items():
        if name not in paths and name not in DUPLICATES:
            paths[name] = path
    limit = Settings().max_image_pixels
    return [
        (name, preprocess(path.read_bytes(), spec, max_pixels=limit))
        for name, path in list(paths.items())[:count]
    ]


def _fashion_inputs(spec: InputSpec, count: int) -> tuple[list[tuple[str, np.ndarray]], list[int]]:
    """The first ``count`` Fashion-MNIST test images, and their labels."""
    test = load_fashion_mnist().test
    inputs = [
        (f"test {i}", to_tensor(Image.fromarray(test.images[i], "L"), spec)) for i in range(count)
    ]
    return inputs, [int(label) for label in test.labels[:count]]


def two_objects(model: Local) -> dict[str, dict[str, float]]:
    """tests/service/test_explain.py's canvas (a cat in the left half of 448x224, a coffee
    cup in the right): per method and label, the share of the map's mass on that object's
    half of the model input."""
    photos = photo_paths()
    canvas = Image.new("RGB", (448, 224))
    for i, name in enumerate(("chelsea", "coffee")):
        with Image.open(photos[name]) as photo:
            canvas.paste(photo.convert("RGB").resize((224, 224)), (224 * i, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    input_ = preprocess(buffer.getvalue(), model.spec, max_pixels=Settings().max_image_pixels)
    half = model.spec.size[1] // 2
    masses: dict[str, dict[str, float]] = {}
    for method in model.methods:
        masses[method] = {}
        for label, side in zip(TWO_OBJECTS, (slice(None, half), slice(half, None)), strict=True):
            heat, _ = model.explain(method, input_, model.labels.index(label))
            pixels = heat.pixels(model.spec.size)
            masses[method][label] = float(pixels[:, side].sum() / pixels.sum())
    return masses


def measure(
    model_dir: Path,
    *,
    models: tuple[str, ...] = (*FASHION, MOBILENET),
    fashion_images: int,
    photos: int,
    orders: int,
    randomise: int,
    ceiling_images: int = 0,
    threads: int = 0,
) -> tuple[dict[str, Any], list[ModelResult]]:
    """Every figure of the report: its circumstances, and the results of each model.
    ``randomise``: how many of the Fashion-MNIST images also go through the re-initialised
    copy (every photo does); ``ceiling_images``: how many go through ``ceiling`` (at most
    the three sample photos)."""
    started = time.monotonic()
    results: list[ModelResult] = []
    masses: dict[str, dict[str, float]] = {}
    for name in models:
        began = time.monotonic()
        with _pair(model_dir, name, threads=threads) as (model, random, redrawn):
            if name == MOBILENET:
                inputs, truth = _photo_inputs(model.spec, photos), list[int]()
                images = evaluate(model, random, inputs, orders=orders, randomise=len(inputs))
                masses = two_objects(model)
                ceiling(model, images[: min(ceiling_images, len(SAMPLE_PHOTOS))])
            else:
                inputs, truth = _fashion_inputs(model.spec, fashion_images)
                images = evaluate(model, random, inputs, orders=orders, randomise=randomise)
                ceiling(model, images[:ceiling_images])
            result = ModelResult(name, model.spec, model.methods, images, redrawn, truth)
        result.seconds = round(time.monotonic() - began, 1)
        results.append(result)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {usable_cores()} cores",
        "onnxruntime": ort.__version__,
        "threads": f"{threads or usable_cores()} intra-op threads",
        "orders": orders,
        "seed": SEED,
        "two_objects": masses,
        "wall_s": round(time.monotonic() - started),
    }
    return meta, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    models = (*FASHION, MOBILENET)
    parser.add_argument("--models", nargs="+", default=list(models), choices=models)
    parser.add_argument("--fashion-images", type=int, default=500, help="per Fashion model")
    parser.add_argument("--randomise", type=int, default=500, help="of those, re-explained")
    parser.add_argument("--photos", type=int, default=10, help="at most (MobileNetV2)")
    parser.add_argument("--ceiling", type=int, default=50, help="of those, occlusion varied")
    parser.add_argument("--orders", type=int, default=3, help="random orders per image")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime's; 0: all cores")
    parser.add_argument("--doc", type=Path, default=Path("docs/explain.md"))
    parser.add_argument("--images-dir", type=Path, default=Path("docs/img/explain"))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--quick", action="store_true", help="a few images: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:  # at most this much; fewer when asked
        args.fashion_images, args.randomise = min(args.fashion_images, 12), min(args.randomise, 12)
        args.photos, args.orders = min(args.photos, 1), min(args.orders, 2)
        args.ceiling = min(args.ceiling, 2)
    meta, results = measure(
        args.model_dir,
        models=tuple(args.models),
        fashion_images=args.fashion_images,
        photos=args.photos,
        orders=args.orders,
        randomise=args.randomise,
        ceiling_images=args.ceiling,
        threads=args.threads,
    )
    meta["command"] = (
        "python -m model_export.explain_report --quick" if args.quick else "make explain-report"
    )
    figures = write_figures(results, args.images_dir, SAMPLE_PHOTOS)
    folder = os.path.relpath(args.images_dir, args.doc.parent)
    block = to_markdown(meta, results, figures, folder)
    print(block)
    if args.json:
        args.json.write_text(json.dumps(as_json(meta, results), indent=1) + "\n")
    write_block(args.doc, block)


if __name__ == "__main__":
    main()
