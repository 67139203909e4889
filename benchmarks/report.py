"""bench.json (and memory.json) -> the Markdown tables and the target checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["targets", "targets_table", "verdict", "write_report"]

LENET, MOBILENET = "lenet5-fashion", "mobilenetv2-imagenet"


def _find(cells: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    for cell in cells:
        if all(cell.get(k) == v for k, v in want.items()):
            return cell
    return None


def _best(cells: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    found = [c for c in cells if all(c.get(k) == v for k, v in want.items())]
    return max(found, key=lambda c: c["images_per_s"]) if found else None


def verdict(ok: bool | None) -> str:
    """A target's verdict as the reports print it."""
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def targets_table(rows: list[tuple[str, str, str]]) -> list[str]:
    """The "Targets" section of a report: (target, measured, verdict) rows."""
    return [
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {t} | {m} | {v} |" for t, m, v in rows),
    ]


def _limit_row(
    target: str, cell: dict[str, Any], limit: dict[str, Any], minimum: float, where: str = ""
) -> tuple[str, str, str]:
    """A target row: the cell's images/s as a share of the in-process limit's best."""
    share = cell["images_per_s"] / limit["best_images_per_s"]
    per_cpu = cell["images_per_cpu_s"] / limit["best_images_per_cpu_s"]
    return target, f"{share:.0%} ({where}{per_cpu:.0%} per CPU-second)", verdict(share >= minimum)


def targets(report: dict[str, Any], memory: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 10 that the data covers."""
    cells = [c for c in report["cells"] if c["table"] == "one-core"]
    limits = report["limits"]
    rows: list[tuple[str, str, str]] = []
    one = {"images_per_request": 1}
    ours = _find(cells, server="cnnserve", model=LENET, concurrency=32, **one)
    plain = _find(cells, server="plain FastAPI", model=LENET, concurrency=32, **one)
    lit = _find(cells, server="LitServe", model=LENET, concurrency=32, **one)
    if ours and plain:
        ratio = ours["requests_per_s"] / plain["requests_per_s"]
        per_cpu = ours["images_per_cpu_s"] / plain["images_per_cpu_s"]
        rows.append(
            (
                "lenet c=32: >= 2x plain FastAPI req/s",
                f"{ratio:.2f}x ({per_cpu:.2f}x per CPU-second)",
                verdict(ratio >= 2),
            )
        )
    if ours and lit:
        ratio = ours["requests_per_s"] / lit["requests_per_s"]
        rows.append(("lenet c=32: > LitServe req/s", f"{ratio:.2f}x", verdict(ratio > 1)))
    many = _best(cells, server="cnnserve", model=LENET, images_per_request=64)
    if many and LENET in limits:
        rows.append(
            _limit_row(
                "lenet 64 images/request: >= 50% of the in-process limit",
                many, limits[LENET], 0.5, f"c={many['concurrency']}; ",
            )
        )  # fmt: skip
    mob = _find(cells, server="cnnserve", model=MOBILENET, concurrency=32, **one)
    if mob and MOBILENET in limits:
        rows.append(
            _limit_row(
                "mobilenet c=32: >= 95% of the in-process limit", mob, limits[MOBILENET], 0.95
            )
        )
        tail = mob["p99_ms"] / mob["p50_ms"] if mob["p50_ms"] else float("inf")
        rows.append(("mobilenet c=32: p99 <= 1.5x p50", f"{tail:.2f}x", verdict(tail <= 1.5)))
    side_by_side = report.get("batching_c1", [])
    for model in (LENET, MOBILENET):
        batched = _find(side_by_side, variant="cnnserve", model=model)
        single = _find(side_by_side, variant="cnnserve batch=1", model=model)
        if batched and single:
            slower = batched["p50_ms"] / single["p50_ms"] - 1
            rows.append(
                (
                    f"{model} c=1: batching costs <= 10% p50 vs max_batch_size=1",
                    f"{slower:+.1%} (p50 {batched['p50_ms']:.2f} vs {single['p50_ms']:.2f} ms, "
                    "interleaved)",
                    verdict(slower <= 0.10),
                )
            )
    if memory:
        growth = memory["growth"]
        rows.append(
            (
                f"RSS flat within 10% over {memory['minutes']} min at c={memory['concurrency']}",
                f"{growth:+.1%}",
                verdict(abs(growth) <= 0.10),
            )
        )
    return rows


def _table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | model | c | img/req | req/s | img/s | p50 ms | p90 ms | p99 ms "
        "| errors | RSS MiB | CPU | img/CPU-s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in sorted(
        cells, key=lambda c: (c["model"], c["images_per_request"], c["server"], c["concurrency"])
    ):
        lines.append(
            f"| {c['server']} | {c['model']} | {c['concurrency']} | {c['images_per_request']} "
            f"| {c['requests_per_s']:,.0f} | {c['images_per_s']:,.0f} | {c['p50_ms']:.1f} "
            f"| {c['p90_ms']:.1f} | {c['p99_ms']:.1f} | {c['errors']} | {c['rss_mib']:.0f} "
            f"| {c['cpu_share']:.0%} | {c['images_per_cpu_s']:,.0f} |"
        )
    return lines


def write_report(report: dict[str, Any], path: Path) -> Path:
    memory_path = path.with_name("memory.json")
    memory = json.loads(memory_path.read_text()) if memory_path.is_file() else None
    meta = report["metadata"]
    start, end = meta.get("load_average_at_start"), meta.get("load_average_at_end")
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m benchmarks.run`) on {meta['date']}, commit "
        f"{meta['commit']}: {meta['cpu']}, {meta['cores']} cores; onnxruntime "
        f"{meta['onnxruntime']}, uvicorn {meta['uvicorn']}, LitServe {meta['litserve']}, "
        f"{meta['wrk']}. {meta['duration_s']:g} s per cell ({meta.get('slow_duration_s', 0):g} s "
        f"for mobilenet) after {meta['warmup_s']:g} s of warm-up. Load average (1 min) "
        f"{start[0] if start else float('nan'):.2f} at the start (above 0.5 the machine was "
        "not quiet and the throughput figures are provisional; images per CPU-second, "
        "`img/CPU-s`, are much less affected: they divide by the CPU time the server actually "
        f"got); {end[0] if end else float('nan'):.2f} at the end, which is the bench's own "
        "load: it keeps both cores busy.",
        "",
        "c: concurrent connections (wrk). CPU: the server's CPU time over the cell's length "
        "and its cores. RSS: summed over the server's processes. cnnserve runs with its "
        "defaults (max_batch_size 32, max_queue_delay 2 ms) and log level WARNING (the peers "
        "log no access lines either).",
        "",
        "Method and analysis: [docs/performance.md](../../docs/performance.md).",
        "",
        *targets_table(targets(report, memory)),
        "",
        "## In-process limit (ONNX Runtime, decode and preprocess included, core 0)",
        "",
        "| model | batch 1 img/s | best batch | best img/s | batch 1 img/CPU-s | best img/CPU-s |",
        "|---|--:|--:|--:|--:|--:|",
        *(
            f"| {m} | {x['batch1_images_per_s']:,.0f} | {x['best_batch']} "
            f"| {x['best_images_per_s']:,.0f} | {x['batch1_images_per_cpu_s']:,.0f} "
            f"| {x['best_images_per_cpu_s']:,.0f} |"
            for m, x in report["limits"].items()
        ),
        "",
        "## Batching at concurrency 1 (side by side, alternating 1.5 s runs; medians)",
        "",
        "| server | model | req/s | p50 ms | p99 ms | img/CPU-s |",
        "|---|---|--:|--:|--:|--:|",
        *(
            f"| {r['variant']} | {r['model']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['images_per_cpu_s']:,.0f} |"
            for r in report.get("batching_c1", [])
        ),
        "",
        "## One core for the server (taskset -c 0), wrk on the other (taskset -c 1)",
        "",
        *_table([c for c in report["cells"] if c["table"] == "one-core"]),
        "",
        "## Both cores for the server (taskset -c 0,1; 2 worker processes each); wrk shares "
        "core 1 with it",
        "",
        *_table([c for c in report["cells"] if c["table"] == "two-cores"]),
        "",
    ]
    if memory:
        lines += [
            "## Memory under load (`make bench-memory`)",
            "",
            f"cnnserve, {memory['model']}, c={memory['concurrency']}, {memory['minutes']} min: "
            f"RSS {memory['first_minute_mib']:.0f} MiB in the first minute, "
            f"{memory['last_minute_mib']:.0f} MiB in the last ({memory['growth']:+.1%}); "
            f"{memory['requests']:,} requests, {memory['errors']} errors.",
            "",
        ]
    explain_path = path.with_name("explain.json")
    if explain_path.is_file():  # benchmarks/explain.py
        explain = json.loads(explain_path.read_text())
        lines += [
            "## Explanations (`make bench-explain`; details in [explain.md](explain.md))",
            "",
            "| target | measured | |",
            "|---|---|---|",
            *(f"| {t} | {m} | {v} |" for t, m, v in explain.get("targets", [])),
            "",
        ]
    if report.get("failures"):
        lines += ["## Failures", "", *(f"- {f}" for f in report["failures"]), ""]
    path.write_text("\n".join(lines))
    return path
