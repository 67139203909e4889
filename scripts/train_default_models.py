"""Train the three default Fashion-MNIST models with the settings the committed ones used.

Run by `make models` (on the CPU that takes hours; on a GPU, minutes). Each run folder lands
in runs/; `cnnserve export` turns them into the model repository.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from model_export.training import TrainConfig, train

DEFAULTS = {
    "lenet5": TrainConfig(arch="lenet5", epochs=40, seed=0),
    "vggnet": TrainConfig(arch="vggnet", epochs=40, seed=0),
    "resnet": TrainConfig(arch="resnet", epochs=40, seed=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--arch", action="append", choices=sorted(DEFAULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for arch in args.arch or DEFAULTS:
        result = train(DEFAULTS[arch], runs_dir=args.runs_dir, run_name=f"{arch}-fashion")
        print(
            json.dumps(
                {
                    "arch": arch,
                    "val": result.val_accuracy,
                    "test": result.test_accuracy,
                    "best_epoch": result.best_epoch,
                    "seconds": round(result.train_seconds, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
