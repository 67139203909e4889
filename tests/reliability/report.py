"""Render the reliability table from test-artifacts/reliability/summary.json.

    python tests/reliability/report.py                 print the table (Markdown)
    python tests/reliability/report.py --area load     only one area's rows
    python tests/reliability/report.py --write docs/reliability.md
                                                       replace the table between the markers
    python tests/reliability/report.py --area "cost of one request (data plane)" \
        --before docs/reliability-before.json          the area's rows beside the same tests'
                                                       rows run against the code before a fix

The summary is written by the tests in this folder (``make reliability`` or ``make test``);
every row carries the time it was measured, so the table never shows a figure no run made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUMMARY = REPO / "test-artifacts" / "reliability" / "summary.json"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
AREAS = [
    "hostile input (native /v1)",
    "hostile input (/v2)",
    "fuzzing",
    "property tests",
    "faults",
    "load",
    "access control",
    "control plane and connections",
    "cost of one request (data plane)",
]


def _figures(figures: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, list):
            return "/".join(map(str, value))
        return str(value)

    return ", ".join(f"{key}={show(value)}" for key, value in figures.items())


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One line adding up the per-kind corpus rows of an area (they carry ``cases``)."""
    counted = [row for row in rows if "passed" in row["figures"]]
    if len(counted) < 2:
        return None
    cases = sum(row["figures"]["cases"] for row in counted)
    passed = sum(row["figures"]["passed"] for row in counted)
    return {
        "tried": f"**all {cases} cases**",
        "held": passed == cases,
        "figures": {"passed": passed, "kinds": len(counted)},
        "run_at": max(row["run_at"] for row in counted),
    }


def render(summary: dict[str, Any], areas: list[str]) -> str:
    rows_by_area: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(summary["rows"]):
        row = summary["rows"][key]
        rows_by_area.setdefault(row["area"], []).append(row)
    lines = [
        "| area | what was tried | held | figures | measured (UTC) |",
        "|---|---|---|---|---|",
    ]
    for area in areas:
        rows = rows_by_area.get(area, [])
        total = _totals(rows)
        for row in [*rows, *([total] if total else [])]:
            held = "yes" if row["held"] else "**no**"
            run_at = row["run_at"].replace("+00:00", "").replace("T", " ")
            tried = row["tried"].replace("|", "\\|")
            lines.append(f"| {area} | {tried} | {held} | {_figures(row['figures'])} | {run_at} |")
    lines.append("")
    lines.append(f"Commit of the last run: `{summary.get('commit')}`.")
    return "\n".join(lines)


def render_before_after(before: dict[str, Any], after: dict[str, Any], area: str) -> str:
    """One line per test of ``area``: what was tried, its figures before and after."""
    lines = [
        "| what was tried | before | after |",
        "|---|---|---|",
    ]
    for key in sorted(after["rows"]):
        row = after["rows"][key]
        if row["area"] != area:
            continue
        old = before["rows"].get(key)
        was = "(not run)" if old is None else _cell(old)
        tried = row["tried"].replace("|", "\\|")
        lines.append(f"| {tried} | {was} | {_cell(row)} |")
    lines.append("")
    lines.append(f"Before: commit `{before.get('commit')}`; after: commit `{after.get('commit')}`.")
    return "\n".join(lines)


def _cell(row: dict[str, Any]) -> str:
    held = "held" if row["held"] else "**failed**"
    return f"{held}: {_figures(row['figures'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", choices=AREAS, help="only this area's rows")
    parser.add_argument("--write", type=Path, help="replace the table between the markers")
    parser.add_argument("--before", type=Path, help="a summary of the same tests, earlier")
    args = parser.parse_args(argv)
    if not SUMMARY.is_file():
        print(f"{SUMMARY} is missing: run `make reliability` first", file=sys.stderr)
        return 1
    if args.before is not None:
        if args.area is None:
            print("--before compares one --area", file=sys.stderr)
            return 1
        before, after = (json.loads(p.read_text()) for p in (args.before, SUMMARY))
        print(render_before_after(before, after, args.area))
        return 0
    table = render(json.loads(SUMMARY.read_text()), [args.area] if args.area else AREAS)
    if args.write is None:
        print(table)
        return 0
    text = args.write.read_text()
    if START not in text or END not in text:
        print(f"{args.write} has no {START} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.write.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"wrote the table to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
