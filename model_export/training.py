"""Train an architecture on a dataset and write a run folder.

A run folder holds ``checkpoint.pt`` (the best weights by validation accuracy, with the
configuration needed to rebuild the model), ``metrics.json`` (per-epoch figures and the
final test accuracy) and ``curves.png`` (loss and accuracy per epoch).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from model_export.architectures import build, count_parameters
from model_export.datasets import Dataset, Split, load_dataset

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    dataset: str = "fashion-mnist"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    patience: int = 8  # epochs without a better validation accuracy before stopping
    augment: bool = True  # random shifts of up to 2 pixels, and flips where the data allows
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False  # a few batches of one epoch: a smoke test, not a model


@dataclass
class TrainResult:
    run_dir: Path
    config: TrainConfig
    parameters: int
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _to_tensors(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.array(split.images)).to(device).unsqueeze(1)  # uint8 N,1,H,W
    return images, torch.from_numpy(np.array(split.labels)).to(device)


def _normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (images.float() / 255.0 - mean) / std


def _augment(batch: torch.Tensor, *, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 2 pixels (zero fill) and flip half of them if allowed."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=generator, device="cpu").to(batch.device)
    dx = torch.randint(0, 5, (n,), generator=generator, device="cpu").to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=batch.device)[None, :])[:, None, None, :]
    index = torch.arange(n, device=batch.device)[:, None, None, None]
    shifted = padded[index, torch.zeros_like(index), rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator, device="cpu").to(batch.device) < 0.5
        shifted = torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)
    return shifted


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    mean: float,
    std: float,
    device: torch.device,
    batch_size: int = 1000,
    limit: int | None = None,
) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of ``model`` on ``split``."""
    model.eval()
    images, labels = _to_tensors(split, device)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = _normalise(images[start : start + batch_size], mean, std)
        y = labels[start : start + batch_size]
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum().item())
    return loss / len(labels), correct / len(labels)


def _train_epoch(
    model: nn.Module,
    data: Dataset,
    *,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    epochs: int,
    max_batches: int,
) -> float:
    model.train()
    images, labels = _to_tensors(data.train, device)
    order = torch.randperm(len(labels), generator=generator).to(device)
    total, seen = 0.0, 0
    batches = range(max_batches)
    bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False)
    for i in bar:
        idx = order[i * config.batch_size : (i + 1) * config.batch_size]
        x, y = images[idx], labels[idx]
        if config.augment:
            x = _augment(x, hflip=data.hflip, generator=generator)
        loss = F.cross_entropy(model(_normalise(x, data.mean, data.std)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        seen += len(y)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / seen


def _plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], label="validation", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(
    config: TrainConfig, *, runs_dir: Path = Path("runs"), run_name: str | None = None
) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and write a run folder; return its metrics.

    The test set is scored once, with the weights of the epoch that had the best validation
    accuracy; it plays no part in choosing them.
    """
    _seed_everything(config.seed)
    data = load_dataset(config.dataset)
    device = _device(config.device)
    model = build(config.arch, in_channels=1, num_classes=data.num_classes).to(device)
    epochs = 1 if config.dry_run else config.epochs
    steps = 3 if config.dry_run else math.ceil(len(data.train) / config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=epochs * steps
    )
    generator = torch.Generator().manual_seed(config.seed)
    run_dir = runs_dir / (run_name or f"{config.arch}-{config.dataset}-seed{config.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    limit = 256 if config.dry_run else None

    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_loss = _train_epoch(
            model,
            data,
            config=config,
            optimizer=optimizer,
            scheduler=scheduler,
            generator=generator,
            device=device,
            epoch=epoch,
            epochs=epochs,
            max_batches=steps,
        )
        val_loss, val_acc = evaluate(
            model, data.val, mean=data.mean, std=data.std, device=device, limit=limit
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - started,
            }
        )
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f",
            epoch,
            train_loss,
            val_loss,
            val_acc,
        )
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            log.info("early stop: no better validation accuracy for %d epochs", config.patience)
            break
    seconds = time.perf_counter() - started
    assert best_state is not None
    model.load_state_dict(best_state)
    _, test_acc = evaluate(
        model, data.test, mean=data.mean, std=data.std, device=device, limit=limit
    )
    result = TrainResult(
        run_dir, config, count_parameters(model), best_epoch, best_acc, test_acc, seconds, history
    )
    torch.save(
        {
            "arch": config.arch,
            "dataset": data.name,
            "labels": data.labels,
            "mean": data.mean,
            "std": data.std,
            "image_size": list(data.test.images.shape[1:]),
            "state_dict": best_state,
        },
        run_dir / "checkpoint.pt",
    )
    metrics = result.to_json() | {
        "device": str(device),
        "torch": torch.__version__,
        "host": platform.node(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_curves(history, run_dir / "curves.png", f"{config.arch} on {data.name}")
    return result
