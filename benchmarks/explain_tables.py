"""The targets and the Markdown page of ``make bench-explain`` (``benchmarks.explain``), from
its report."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.report import targets_table, verdict

__all__ = ["CAM_RATIO", "OCCLUSION_RATIO", "P99_RATIO", "targets", "to_markdown"]

# Issue 16's targets: cam's latency, occlusion against ONNX Runtime alone, classify's p99
# beside occlusions.
CAM_RATIO, OCCLUSION_RATIO, P99_RATIO = 1.3, 1.25, 3.0


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each speed target of issue 16."""
    cam, occ, beside = report["cam_vs_classify"], report["occlusion"], report["beside_occlusions"]
    return [
        (
            f"cam at c=1: latency <= {CAM_RATIO}x classify's",
            f"{cam['ratio_p50']:.2f}x p50 ({cam['cam']['p50_ms']:.1f} vs "
            f"{cam['classify']['p50_ms']:.1f} ms), {cam['ratio_p90']:.2f}x p90",
            verdict(cam["ratio_p50"] <= CAM_RATIO),
        ),
        (
            f"occlusion, {occ['copies']} copies: <= {OCCLUSION_RATIO}x ONNX Runtime alone",
            f"{occ['ratio']:.2f}x ({occ['served']['seconds_median']:.2f} s vs "
            f"{occ['limit']['seconds_median']:.2f} s at batch {occ['limit_batch']}); "
            f"{occ['cpu_ratio']:.2f}x in CPU seconds",
            verdict(occ["ratio"] <= OCCLUSION_RATIO),
        ),
        (
            f"classify c=8 beside occlusions: p99 <= {P99_RATIO:g}x its p99 alone",
            f"{beside['ratio_p99']:.2f}x ({beside['beside']['p99_ms']:.0f} vs "
            f"{beside['alone']['p99_ms']:.0f} ms)",
            verdict(beside["ratio_p99"] <= P99_RATIO),
        ),
    ]


def to_markdown(report: dict[str, Any]) -> str:
    meta, cam = report["metadata"], report["cam_vs_classify"]
    beside, occ = report["beside_occlusions"], report["occlusion"]
    served, alone = occ["served"], occ["limit"]
    start, end = meta["load_average_at_start"], meta["load_average_at_end"]
    occluding = beside["occlusion_client"]
    lines = [
        "# Explanation benchmark",
        "",
        f"Written by `make bench-explain` (`python -m benchmarks.explain`) on {meta['date']}, "
        f"commit {meta['commit']}: {meta['cpu']}, {meta['cores']} cores; onnxruntime "
        f"{meta['onnxruntime']}. {report['model']}, the benchmark's chelsea PNG; cnnserve on "
        "core 0 with its defaults and the explanation cache off, wrk on core 1. Load average "
        f"(1 min) {start[0]:.2f} at the start, {end[0]:.2f} at the end (above 0.5 the machine "
        f"was not quiet: the figures are provisional); {meta['wall_s']} s in all.",
        "",
        *targets_table([tuple(row) for row in report["targets"]]),
        "",
        "## cam and classify at concurrency 1 (alternating runs; medians)",
        "",
        "| request | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {kind} | {cam[kind]['requests_per_s']:.1f} | {cam[kind]['p50_ms']:.2f} "
            f"| {cam[kind]['p90_ms']:.2f} | {cam[kind]['p99_ms']:.2f} |"
            for kind in ("classify", "cam")
        ),
        "",
        "## Occlusion",
        "",
        f"{occ['copies']} copies (window {occ['parameters']['window']}, stride "
        f"{occ['parameters']['stride']}), sent one after the other, alternating with ONNX "
        f"Runtime alone running the same {occ['copies']} occluded inputs in batches of "
        f"{occ['limit_batch']} (one thread, the server's core, the server idle); medians of "
        f"{len(served['seconds'])} each:",
        "",
        "| | wall s | CPU s |",
        "|---|--:|--:|",
        f"| occlusion through the server (its own `elapsed_ms`: "
        f"{served['server_seconds_median']:.3f} s) | {served['seconds_median']:.3f} "
        f"| {served['cpu_s_median']:.3f} |",
        f"| ONNX Runtime alone, batch {occ['limit_batch']} | {alone['seconds_median']:.3f} "
        f"| {alone['cpu_s_median']:.3f} |",
        "",
        "ONNX Runtime alone at other batch sizes (wall s, measured once after): "
        + ", ".join(f"batch {b}: {x:.3f}" for b, x in occ["limit_other_batches"].items())
        + ".",
        "",
        "## Classify at concurrency 8, alone and beside one client sending occlusions",
        "",
        "| classify | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {kind} | {beside[kind]['requests_per_s']:.1f} | {beside[kind]['p50_ms']:.1f} "
            f"| {beside[kind]['p90_ms']:.1f} | {beside[kind]['p99_ms']:.1f} |"
            for kind in ("alone", "beside")
        ),
        "",
        f"The occlusion client meanwhile: {sum(o['requests'] for o in occluding)} occlusions "
        f"in {len(occluding)} runs, p50 "
        f"{statistics.median(o['p50_ms'] for o in occluding) / 1000:.2f} s.",
        "",
    ]
    return "\n".join(lines)
