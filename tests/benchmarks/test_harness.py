"""The benchmark harness's own logic: the cell plan, the target checks, the profile's
attribution of samples. Fast: no server, no wrk."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.ab import paired, parse_variant
from benchmarks.profile import OTHER, _own_functions, charge
from benchmarks.report import targets, write_report
from benchmarks.run import MANY, ONE_CORE, TWO_CORES, _cells

LENET, MOBILENET = "lenet5-fashion", "mobilenetv2-imagenet"


def _args() -> argparse.Namespace:
    return argparse.Namespace(concurrency=[1, 8, 32, 64], two_core_concurrency=[8, 32, 64])


def _cell(server: str, model: str, c: int, **values: Any) -> dict[str, Any]:
    base = {
        "table": "one-core",
        "server": server,
        "model": model,
        "cores": "0",
        "concurrency": c,
        "images_per_request": 1,
        "requests_per_s": 100.0,
        "images_per_s": 100.0,
        "images_per_cpu_s": 100.0,
        "cpu_share": 1.0,
        "p50_ms": 10.0,
        "p90_ms": 11.0,
        "p99_ms": 12.0,
        "errors": 0,
        "rss_mib": 100.0,
    }
    return base | values


def test_the_plan_covers_the_issue_and_stays_small() -> None:
    by_label = {spec.label: spec for spec in ONE_CORE}
    ours = _cells("one-core", by_label["cnnserve"], LENET, _args())
    assert [c for c, n in ours if n == 1] == [1, 8, 32, 64]
    assert {n for _, n in ours} == {1, MANY}  # the 64-images-per-request rows
    assert all(n == 1 for _, n in _cells("one-core", by_label["LitServe"], LENET, _args()))
    assert _cells("one-core", by_label["cnnserve raw body"], MOBILENET, _args()) == []
    assert _cells("one-core", by_label["cnnserve raw body"], LENET, _args()) == [(1, 1), (32, 1)]
    two = _cells("two-cores", TWO_CORES[0], MOBILENET, _args())
    assert two == [(8, 1), (32, 1), (64, 1)]


def test_targets_are_computed_from_the_cells() -> None:
    report = {
        "limits": {
            LENET: {"best_images_per_s": 10_000.0, "best_images_per_cpu_s": 10_000.0},
            MOBILENET: {"best_images_per_s": 100.0, "best_images_per_cpu_s": 100.0},
        },
        "cells": [
            _cell("cnnserve", LENET, 32, requests_per_s=3000.0, images_per_cpu_s=3000.0),
            _cell("plain FastAPI", LENET, 32, requests_per_s=1000.0, images_per_cpu_s=1000.0),
            _cell("LitServe", LENET, 32, requests_per_s=700.0),
            _cell("cnnserve", LENET, 8, images_per_request=64, images_per_s=4000.0),
            _cell("cnnserve", MOBILENET, 32, images_per_s=96.0, p50_ms=300.0, p99_ms=500.0),
        ],
        "batching_c1": [
            {"variant": "cnnserve", "model": LENET, "p50_ms": 1.05},
            {"variant": "cnnserve batch=1", "model": LENET, "p50_ms": 1.0},
            {"variant": "cnnserve", "model": MOBILENET, "p50_ms": 13.0},
            {"variant": "cnnserve batch=1", "model": MOBILENET, "p50_ms": 11.0},
        ],
    }
    memory = {"growth": 0.02, "minutes": 5, "concurrency": 64}
    verdicts = {target: verdict for target, _, verdict in targets(report, memory)}
    assert verdicts["lenet c=32: >= 2x plain FastAPI req/s"] == "met"
    assert verdicts["lenet c=32: > LitServe req/s"] == "met"
    assert verdicts["lenet 64 images/request: >= 50% of the in-process limit"] == "**not met**"
    assert verdicts["mobilenet c=32: >= 95% of the in-process limit"] == "met"
    assert verdicts["mobilenet c=32: p99 <= 1.5x p50"] == "**not met**"
    assert verdicts[f"{LENET} c=1: batching costs <= 10% p50 vs max_batch_size=1"] == "met"
    assert verdicts[f"{MOBILENET} c=1: batching costs <= 10% p50 vs max_batch_size=1"] == (
        "**not met**"
    )
    assert verdicts["RSS flat within 10% over 5 min at c=64"] == "met"


def test_the_report_renders_without_memory_results(tmp_path: Path) -> None:
    report = {
        "metadata": {
            "date": "2026-11-27T00:00:00+00:00",
            "commit": "abc",
            "cpu": "test",
            "cores": 2,
            "onnxruntime": "1",
            "uvicorn": "1",
            "litserve": "1",
            "wrk": "wrk 4",
            "duration_s": 6,
            "slow_duration_s": 10,
            "warmup_s": 1,
            "load_average_at_start": [0.1, 0.1, 0.1],
            "load_average_at_end": [0.2, 0.1, 0.1],
        },
        "limits": {
            LENET: {
                "batch1_images_per_s": 1.0,
                "best_batch": 32,
                "best_images_per_s": 2.0,
                "batch1_images_per_cpu_s": 1.0,
                "best_images_per_cpu_s": 2.0,
            }
        },
        "cells": [_cell("cnnserve", LENET, 32)],
    }
    text = write_report(report, tmp_path / "README.md").read_text()
    assert "| cnnserve | lenet5-fashion | 32 | 1 |" in text
    assert "Memory under load" not in text


def test_profile_samples_are_charged_to_the_innermost_known_part() -> None:
    stack = (
        "<module> (cnnserve:6);run_asgi (uvicorn/protocols/http/httptools_impl.py:4);"
        "classify (service/api/models.py:9);DataPlane.prepare (service/dataplane.py:3);"
        "load_image (service/preprocessing.py:7);ImageFile.load (PIL/ImageFile.py:2)"
    )
    assert charge(stack) == "decode (Pillow)"
    assert charge(stack.rsplit(";", 2)[0]) == "data plane (other)"
    assert charge("<module> (cnnserve:6);run_asgi (uvicorn/protocols/http/h.py:1)") == (
        "HTTP server (uvicorn, httptools)"
    )
    assert charge("<module> (x.py:1)") == OTHER


def test_profile_lists_cnnserve_functions_by_their_own_samples(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (uvicorn/main.py:1);top_k (service/postprocess.py:14) 3\n"
        "run (uvicorn/main.py:1);top_k (service/postprocess.py:15);argsort (numpy/f.py:2) 5\n"
        "classify (service/dataplane.py:9);_finite (service/dataplane.py:70) 1\n"
        "run (uvicorn/main.py:1) 11\n"
    )
    # Self time only (argsort's samples are numpy's), over all 20 samples, largest first.
    assert _own_functions(raw) == {
        "top_k (service/postprocess.py)": 0.15,
        "_finite (service/dataplane.py)": 0.05,
    }
    assert list(_own_functions(raw, top=1)) == ["top_k (service/postprocess.py)"]


def test_ab_pairs_each_round_with_the_first_variant() -> None:
    first = [100.0, 50.0, 100.0]
    # A slow spell (round 2) halves both: the paired ratio stays 1.1.
    assert paired([110.0, 55.0, 110.0], first) == {"vs_first": 1.1, "faster_than_first": 3}
    assert paired([90.0, 60.0, 80.0], first) == {"vs_first": 0.9, "faster_than_first": 1}
    assert paired([100.0], None) == {"vs_first": None, "faster_than_first": None}


def test_a_patch_variant_applies_to_the_ref_it_names(tmp_path: Path) -> None:
    """``patch:FILE@REF``: the patch goes onto service/ as at REF (the ablation patches were
    cut against a commit the working tree has since moved on from)."""
    original = "cnnserve's inference service: ONNX Runtime models behind a FastAPI app."
    patch = tmp_path / "docstring.patch"
    patch.write_text(
        "--- a/service/__init__.py\n+++ b/service/__init__.py\n@@ -1 +1 @@\n"
        f'-"""{original}\n+"""patched\n'
    )
    spec = parse_variant(f"patched=patch:{patch}@HEAD,CNNSERVE_MAX_BATCH_SIZE=1")
    tree = Path(spec.env["PYTHONPATH"].split(":")[0])
    assert (tree / "service" / "__init__.py").read_text().startswith('"""patched\n')
    assert spec.env["CNNSERVE_MAX_BATCH_SIZE"] == "1"
