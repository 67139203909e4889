"""``python -m benchmarks.repos``: model repositories that differ from models/ in one thing,
for side-by-side runs (``benchmarks.ab`` variants with ``CNNSERVE_MODEL_DIR``).

    python -m benchmarks.repos without-trust DIR
        the benchmark models without their calibration and out-of-distribution facts: served
        from DIR, a model answers raw softmax probabilities and only the energy score with no
        threshold (a log-sum-exp of the logits: no temperature, no Mahalanobis detector, no
        extra graph outputs), everything else as shipped (what trust costs classify)
    python -m benchmarks.repos pinned DIR MODEL VERSION
        MODEL alone, serving VERSION by default (FP32 against INT8 through the HTTP API)
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.inputs import MODELS, REPO

__all__ = ["main", "pinned", "without_trust"]

_TRUST_FACTS = ("calibration", "ood")


def _copy(target: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    destination = target / name
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(REPO / "models" / name, destination)
    card_path = destination / "model.json"
    card = json.loads(card_path.read_text())
    change(card)
    card_path.write_text(json.dumps(card, indent=2) + "\n")


def without_trust(target: Path, models: tuple[str, ...] = MODELS) -> Path:
    """Copy ``models`` to ``target``, every version's trust facts removed."""

    def strip(card: dict[str, Any]) -> None:
        for facts in card.get("versions", {}).values():
            for key in _TRUST_FACTS:
                facts.pop(key, None)

    for name in models:
        _copy(target, name, strip)
    return target


def pinned(target: Path, model: str, version: str) -> Path:
    """``model`` alone in ``target``, ``version`` its default."""
    shutil.rmtree(target, ignore_errors=True)
    _copy(target, model, lambda card: card.update(default_version=version))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    untrusted = commands.add_parser("without-trust")
    untrusted.add_argument("target", type=Path)
    pin = commands.add_parser("pinned")
    pin.add_argument("target", type=Path)
    pin.add_argument("model")
    pin.add_argument("version")
    args = parser.parse_args(argv)
    if args.command == "without-trust":
        print(without_trust(args.target))
    else:
        print(pinned(args.target, args.model, args.version))


if __name__ == "__main__":
    main()
