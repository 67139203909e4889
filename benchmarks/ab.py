"""``python -m benchmarks.ab``: an interleaved A/B of server variants on one core.

On a machine other people use, two runs minutes apart are not comparable. This starts every
variant at once (all pinned to core 0, idle until loaded), then measures them in turn, round
after round (each round starting one variant later), with wrk on core 1, and reports medians,
including images per CPU-second (the server's own CPU time, which other load barely moves),
and each variant against the first, paired round by round (``vs_first``: the median of the
per-round ratios, which a slow spell of the machine moves far less than the medians).

A variant is NAME=SOURCE[,KEY=VALUE...]; SOURCE is ``tree`` (the working tree),
``ref:REF`` (service/ as at a git commit), ``patch:FILE[@REF]`` (the working tree's service/,
or REF's, with a patch applied), ``dir:PATH`` (a folder holding a service/ package), ``plain`` or
``litserve`` (the peers) or ``bare`` (a bare ASGI function: the ceiling, for scale);
KEY=VALUE are CNNSERVE_* settings.

    python -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 \\
        --variant before=ref:3f0f134 --variant after=tree \\
        --variant batch1=tree,CNNSERVE_MAX_BATCH_SIZE=1 --variant plain=plain
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.inputs import MODELS, RAMP_MS, RAW, REPO, image_path, source_tree
from benchmarks.servers import ServerSpec, check_answer, running
from benchmarks.wrk import run_wrk

__all__ = ["interleave", "main", "parse_variant"]


def _patched_tree(name: str, patch: Path, ref: str | None = None) -> Path:
    """service/ of the working tree (or as at ``ref``) with ``patch`` applied."""
    target = RAW / "variants" / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    base = REPO if ref is None else source_tree(ref)
    shutil.copytree(base / "service", target / "service")
    with patch.open("rb") as diff:
        subprocess.run(["patch", "-s", "-p1", "-d", str(target)], stdin=diff, check=True)
    return target


def parse_variant(text: str) -> ServerSpec:
    """NAME=SOURCE[,KEY=VALUE...] -> the server to start."""
    name, _, rest = text.partition("=")
    source, *settings = rest.split(",")
    env = dict(setting.split("=", 1) for setting in settings)
    peers = {"plain": "fastapi", "litserve": "litserve", "bare": "bare"}
    if source in peers:
        return ServerSpec(peers[source], name, env=env)
    if source.startswith("ref:"):
        env["PYTHONPATH"] = f"{source_tree(source[4:])}:{REPO}"
    elif source.startswith("dir:"):
        env["PYTHONPATH"] = f"{Path(source[4:]).resolve()}:{REPO}"
    elif source.startswith("patch:"):
        patch, _, ref = source[6:].partition("@")
        tree = _patched_tree(name, Path(patch).resolve(), ref or None)
        env["PYTHONPATH"] = f"{tree}:{REPO}"
    elif source != "tree":
        raise ValueError(f"unknown source {source!r} in {text!r}")
    return ServerSpec("cnnserve", name, env=env)


def interleave(
    specs: list[ServerSpec],
    model: str,
    *,
    concurrency: list[int],
    images: int = 1,
    rounds: int = 5,
    seconds: float = 2.0,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Start every server at once, then measure them in turn, ``rounds`` times at each
    concurrency; the medians per server and concurrency."""
    image = image_path(model)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(running(replace(spec, label=f"ab-{spec.label}"), model))
            for spec in specs
        ]
        for server in servers:
            check_answer(server.url, model, image.read_bytes())
        for level in concurrency:
            load = {"connections": level, "images_per_request": images, "ramp_ms": RAMP_MS[model]}
            samples: dict[str, list[tuple[float, float, float, float]]] = {}
            for server in servers:
                run_wrk(server.url, image, seconds=1, **load)  # warm up
                server.settle()  # its leftovers must not run during the next one's turn
            for turn in range(rounds):
                # Each round starts one server later: no variant always goes first (on this
                # VM, a fixed order gave the first of four identical servers 3 to 12 % less).
                shift = turn % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    cpu = server.cpu_seconds()
                    result = run_wrk(server.url, image, seconds=seconds, **load)
                    cpu = server.cpu_seconds() - cpu
                    server.settle()
                    done = result.requests * images
                    samples.setdefault(server.spec.label, []).append(
                        (result.requests_per_s, done / cpu if cpu else 0.0, result.p50_ms,
                         result.p99_ms)
                    )  # fmt: skip
            first_label = servers[0].spec.label
            first = [r[0] for r in samples[first_label]]
            for label, runs in samples.items():
                row = {
                    "variant": label.removeprefix("ab-"),
                    "model": model,
                    "concurrency": level,
                    "images_per_request": images,
                    "requests_per_s": round(statistics.median(r[0] for r in runs), 1),
                    "images_per_cpu_s": round(statistics.median(r[1] for r in runs), 1),
                    "p50_ms": round(statistics.median(r[2] for r in runs), 3),
                    "p99_ms": round(statistics.median(r[3] for r in runs), 3),
                    "runs_requests_per_s": [round(r[0]) for r in runs],
                    **paired([r[0] for r in runs], None if label == first_label else first),
                }
                rows.append(row)
                if echo:
                    print(
                        f"{row['variant']:24} c={level:<3} {row['requests_per_s']:9.1f} req/s "
                        f"{row['images_per_cpu_s']:9.1f} img/CPU-s  p50 {row['p50_ms']:8.2f} "
                        f"p99 {row['p99_ms']:8.2f} ms  runs {row['runs_requests_per_s']}",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def paired(runs: list[float], first: list[float] | None) -> dict[str, Any]:
    """A variant against the first one named (None: this is the first), round by round (the
    two measured minutes apart at most, so a slow spell of the machine hits both): the
    median of the per-round ratios of requests/s, and in how many rounds the variant was
    the faster."""
    if first is None:
        return {"vs_first": None, "faster_than_first": None}
    ratios = [mine / theirs for mine, theirs in zip(runs, first, strict=True) if theirs]
    return {
        "vs_first": round(statistics.median(ratios), 3) if ratios else None,
        "faster_than_first": sum(ratio > 1 for ratio in ratios),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The medians as the Markdown table docs/performance.md quotes."""
    lines = [
        "| variant | c | req/s | img/s | img/CPU-s | p50 ms | p99 ms | vs first, paired |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in sorted(rows, key=lambda r: r["concurrency"]):  # stable: variants in order
        lines.append(
            f"| {row['variant']} | {row['concurrency']} | {row['requests_per_s']:,.0f} "
            f"| {row['requests_per_s'] * row['images_per_request']:,.0f} "
            f"| {row['images_per_cpu_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {_versus(row)} |"
        )
    return "\n".join(lines)


def _versus(row: dict[str, Any]) -> str:
    """ "1.08x (7/9)": the paired ratio and the rounds won; blank for the first variant."""
    if row.get("vs_first") is None:
        return ""
    rounds = len(row["runs_requests_per_s"])
    return f"{row['vs_first']:.2f}x ({row['faster_than_first']}/{rounds})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODELS[0], choices=MODELS)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--output", type=Path, help="also write the medians as JSON here")
    args = parser.parse_args(argv)
    rows = interleave(
        args.variant,
        args.model,
        concurrency=args.concurrency,
        images=args.images,
        rounds=args.rounds,
        seconds=args.seconds,
    )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
