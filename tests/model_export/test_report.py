"""`make models-report`: a row for any model the repository can hold, figures it lacks shown
as "—" (an imported model has no parameter count, dataset or calibration)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from testkit import MODELS

from model_export.report import measure, to_markdown


def test_the_report_has_a_row_for_an_imported_model_with_missing_figures(tmp_path: Path) -> None:
    shutil.copytree(MODELS / "lenet5-fashion", tmp_path / "lenet5-fashion")
    shutil.copytree(MODELS / "lenet5-fashion", tmp_path / "mine")
    card_path = tmp_path / "mine" / "model.json"
    card = json.loads(card_path.read_text())
    for key in ("parameters", "dataset", "architecture", "metrics", "versions"):
        card.pop(key, None)
    card_path.write_text(json.dumps(card | {"name": "mine"}))

    rows = {r["name"]: r for r in measure(tmp_path, runs=2, runs_batch32=1)}
    assert rows["mine"]["test_accuracy"] is None and rows["mine"]["parameters"] is None
    assert rows["lenet5-fashion"]["test_accuracy"] > 0.85
    ece = rows["lenet5-fashion"]["ece_test"]
    assert ece["after"] < ece["before"]  # the shipped model is calibrated

    table = to_markdown(list(rows.values()), load=0.5)
    mine = next(line for line in table.splitlines() if line.startswith("| `mine`"))
    assert mine.count("| — ") == 4  # dataset, accuracy, ECE, parameters
    lenet = next(line for line in table.splitlines() if line.startswith("| `lenet5-fashion`"))
    assert f"| {ece['before']:.3f} → {ece['after']:.3f} |" in lenet
    assert "load average 0.5" in table
