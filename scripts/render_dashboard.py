"""Draw the Grafana dashboard's panels from real data: docs/img/dashboard.png.

Grafana cannot be installed here (not in Debian, and no image can be pulled), so this does the
closest thing. It starts `cnnserve serve` and Debian's Prometheus (scraping it every 2 s and
evaluating the alert rules) on 127.0.0.1, runs a bounded load of real images (Fashion-MNIST
test images, the sample photos, MNIST digits and noise as out-of-distribution input, feature
maps, explanations, /v2 tensors, a few bad requests), then sends each panel's queries to
Prometheus's HTTP API as Grafana would (variables at "All", $__rate_interval as Grafana
computes it) and draws the results with matplotlib in the dashboard's grid.

    python scripts/render_dashboard.py --load-seconds 90 --out docs/img/dashboard.png
    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 60

The second form draws from a Prometheus that already scrapes a cnnserve (no server, no load).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from dashboard_load import REPO, SCRAPE_S, WORKERS, inputs, run_load, serve_and_scrape
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from PIL import Image

DASHBOARD = REPO / "deploy" / "monitoring" / "grafana" / "dashboards" / "cnnserve.json"
STEP_S = 4
# Grafana: max(step + scrape interval, 4 x scrape interval).
RATE_INTERVAL_S = max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)
# Grafana's dark theme and classic palette.
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
NAMED = {"green": "#73bf69", "yellow": "#fade2a", "red": "#f2495c", "blue": "#5794f2"}
HEATMAP = LinearSegmentedColormap.from_list("grafana", ["#3b2412", "#fa6400", "#ffd8b0"])


# -- queries --------------------------------------------------------------------------------


@dataclass
class Series:
    labels: dict[str, str]
    times: np.ndarray  # datetimes
    values: np.ndarray


class Prometheus:
    """Prometheus's HTTP API, with the dashboard's variables substituted as Grafana does."""

    def __init__(self, url: str, board: dict[str, Any], start: float, end: float) -> None:
        self.url, self.start, self.end = url, start, end
        self.variables = {
            "__rate_interval": f"{RATE_INTERVAL_S}s",
            "__interval": f"{STEP_S}s",
            "__range": f"{round(end - start)}s",
        }
        for variable in board["templating"]["list"]:
            if variable["type"] != "datasource":
                self.variables[variable["name"]] = variable.get("allValue") or ".*"

    def _expr(self, expr: str) -> str:
        return re.sub(
            r"\$\{(\w+)(?::\w+)?\}|\$(\w+)",
            lambda m: self.variables[m.group(1) or m.group(2)],
            expr,
        )

    def range(self, expr: str) -> list[Series]:
        """Every series on one time grid (start, start + step, ...): NaN where it has no
        point, as Grafana leaves a gap."""
        params = {"query": self._expr(expr), "start": self.start, "end": self.end, "step": STEP_S}
        steps = np.arange(self.start, self.end + 1e-6, STEP_S)
        times = np.array([datetime.fromtimestamp(t) for t in steps])
        series = []
        for item in self._get("/api/v1/query_range", params):
            values = np.full(len(steps), np.nan)
            for t, v in item["values"]:
                values[round((float(t) - self.start) / STEP_S)] = float(v)
            series.append(Series(item["metric"], times, values))
        return series

    def instant(self, expr: str) -> list[dict[str, str]]:
        result = self._get("/api/v1/query", {"query": self._expr(expr), "time": self.end})
        return [item["metric"] | {"Value": item["value"][1]} for item in result]

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = httpx.get(self.url + path, params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params['query']}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template or template == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


# -- drawing ----------------------------------------------------------------------------------


def _format(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "no data"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        if value == 0:
            return "0 s"
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    suffix = {"reqps": " req/s"}.get(unit, "")
    return f"{value:.3g}{suffix}"


def _color(name: str, index: int, overrides: list[dict[str, Any]]) -> str:
    color = PALETTE[index % len(PALETTE)]
    for override in overrides:
        if re.fullmatch(override["matcher"]["options"], name):
            for prop in override["properties"]:
                if prop["id"] == "color":
                    color = NAMED.get(prop["value"]["fixedColor"], prop["value"]["fixedColor"])
    return color


def _dashed(name: str, overrides: list[dict[str, Any]]) -> bool:
    return any(
        re.fullmatch(o["matcher"]["options"], name)
        and any(p["id"] == "custom.lineStyle" for p in o["properties"])
        for o in overrides
    )


def _style(ax: Axes, unit: str) -> None:
    ax.set_facecolor(PANEL)
    ax.tick_params(colors=TEXT, labelsize=7, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: _format(v, unit)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))


def draw_timeseries(ax: Axes, panel: dict[str, Any], prom: Prometheus) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    overrides = panel["fieldConfig"]["overrides"]
    unit = defaults.get("unit", "short")
    _style(ax, unit)
    lines = [
        (_legend(target.get("legendFormat", ""), s.labels), s)
        for target in panel["targets"]
        for s in prom.range(target["expr"])
    ]
    lines.sort(key=lambda line: line[0])
    stacked = defaults["custom"]["stacking"]["mode"] == "normal"
    if stacked and lines:
        values = np.vstack([np.nan_to_num(s.values) for _, s in lines])
        colors = [_color(name, i, overrides) for i, (name, _) in enumerate(lines)]
        ax.stackplot(lines[0][1].times, values, colors=colors, alpha=0.5, linewidth=0.8)
        for i, (name, _) in enumerate(lines):
            ax.plot([], [], color=colors[i], label=name)
    else:
        for i, (name, s) in enumerate(lines):
            style = "--" if _dashed(name, overrides) else "-"
            ax.plot(s.times, s.values, style, color=_color(name, i, overrides), lw=1.2, label=name)
    if defaults["custom"]["thresholdsStyle"]["mode"] != "off":
        for step in defaults["thresholds"]["steps"][1:]:
            ax.axhline(step["value"], color=NAMED.get(step["color"], step["color"]), ls="--", lw=1)
    bottom = defaults.get("min")
    ax.set_ylim(bottom=bottom, top=defaults.get("max"))
    ax.set_xlim(datetime.fromtimestamp(prom.start), datetime.fromtimestamp(prom.end))
    if lines:
        legend = ax.legend(
            loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3, fontsize=6.5, frameon=False
        )
        for text in legend.get_texts():
            text.set_color(TEXT)
    else:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)


def draw_stat(ax: Axes, panel: dict[str, Any], prom: Prometheus) -> None:
    ax.set_facecolor(PANEL)
    ax.axis("off")
    defaults = panel["fieldConfig"]["defaults"]
    series = prom.range(panel["targets"][0]["expr"])
    values = series[0].values if series else np.array([np.nan])
    finite = values[~np.isnan(values)]
    last = float(finite[-1]) if len(finite) else float("nan")
    color = NAMED["green"]
    for step in defaults["thresholds"]["steps"]:
        if step["value"] is None or last >= step["value"]:
            color = NAMED.get(step["color"], step["color"])
    decimals = defaults.get("decimals")
    text = _format(last, defaults["unit"])
    if decimals is not None and last == last and defaults["unit"] in {"short", "reqps"}:
        text = f"{last:.{decimals}f}" + (" req/s" if defaults["unit"] == "reqps" else "")
    if panel["options"].get("graphMode") == "area" and len(finite) > 1:
        ax.fill_between(range(len(values)), np.nan_to_num(values), color=color, alpha=0.15)
        ax.set_ylim(0, max(float(np.nanmax(values)), 1e-9) * 2.2)
    ax.text(
        0.5,
        0.55,
        text,
        color=color,
        fontsize=20,
        ha="center",
        va="center",
        weight="bold",
        transform=ax.transAxes,
    )


def draw_heatmap(ax: Axes, panel: dict[str, Any], prom: Prometheus) -> None:
    _style(ax, "short")
    series = prom.range(panel["targets"][0]["expr"])
    if not series:
        return
    series.sort(key=lambda s: float(s.labels["le"]))
    cumulative = np.nan_to_num(np.vstack([s.values for s in series]))
    counts = np.diff(cumulative, axis=0, prepend=0).clip(min=0)
    labels = [s.labels["le"].removesuffix(".0") for s in series]
    times = mdates.date2num(series[0].times)
    ax.pcolormesh(
        np.append(times, times[-1] + (times[-1] - times[-2])),
        np.arange(len(labels) + 1),
        np.where(counts > 0, counts, np.nan),
        cmap=HEATMAP,
        shading="flat",
    )
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels)
    ax.grid(False)


def draw_table(ax: Axes, panel: dict[str, Any], prom: Prometheus) -> None:
    ax.set_facecolor(PANEL)
    ax.axis("off")
    rows = prom.instant(panel["targets"][0]["expr"])
    organize = panel["transformations"][0]["options"]
    columns = sorted(organize["indexByName"], key=organize["indexByName"].get)
    header = [organize["renameByName"].get(c, c) for c in columns]
    body = [[row.get(c, "") or "-" for c in columns] for row in sorted(rows, key=str)]
    table = ax.table(
        cellText=body or [["no data"] + [""] * (len(columns) - 1)],
        colLabels=header,
        loc="upper left",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for cell in table.get_celld().values():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)


DRAW = {
    "timeseries": draw_timeseries,
    "stat": draw_stat,
    "heatmap": draw_heatmap,
    "table": draw_table,
}


@dataclass
class Grid:
    """Grafana's layout: 24 columns; a grid unit is 30 px high. Positions in figure fractions."""

    units_high: int
    col_px: int = 70
    row_px: int = 30
    top_px: int = 60  # the title and the note

    @property
    def size_px(self) -> tuple[int, int]:
        return 24 * self.col_px, self.units_high * self.row_px + self.top_px

    def box(self, pos: dict[str, int], pad: float = 4) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) of a gridPos."""
        width, height = self.size_px
        return (
            (pos["x"] * self.col_px + pad) / width,
            1 - (self.top_px + (pos["y"] + pos["h"]) * self.row_px - pad) / height,
            (pos["w"] * self.col_px - 2 * pad) / width,
            (pos["h"] * self.row_px - 2 * pad) / height,
        )

    def panel(self, fig: Figure, panel: dict[str, Any]) -> Axes:
        """Draw a panel's frame and title; the axes for its content inside."""
        width, height = self.size_px
        left, bottom, w, h = self.box(panel["gridPos"])
        frame = plt.Rectangle((left, bottom), w, h, transform=fig.transFigure, color=PANEL)
        frame.set_zorder(-10)
        fig.patches.append(frame)
        title_at = (left + 6 / width, bottom + h - 16 / height)
        fig.text(*title_at, panel["title"], color=TEXT, fontsize=8.5, weight="bold")
        legend_px = 34 if panel["type"] == "timeseries" else 0
        axis_px = 46 if panel["type"] in {"timeseries", "heatmap"} else 8
        return fig.add_axes(
            (
                left + axis_px / width,
                bottom + (legend_px + 18) / height,
                w - (axis_px + 8) / width,
                h - (legend_px + 42) / height,
            )
        )


def render(board: dict[str, Any], prom: Prometheus, out: Path, note: str) -> None:
    grid = Grid(max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"]))
    width, height = grid.size_px
    fig: Figure = plt.figure(figsize=(width / 100, height / 100), dpi=100, facecolor=BACKGROUND)
    start = datetime.fromtimestamp(prom.start).strftime("%Y-%m-%d %H:%M:%S")
    end = datetime.fromtimestamp(prom.end).strftime("%H:%M:%S")
    heading = f"{board['title']}    {start} - {end}"
    fig.text(8 / width, 1 - 22 / height, heading, color=TEXT, fontsize=13, weight="bold")
    fig.text(8 / width, 1 - 44 / height, note, color="#8e8e8e", fontsize=8)
    for panel in board["panels"]:
        if panel["type"] == "row":
            left, bottom, _, _ = grid.box(panel["gridPos"])
            fig.text(
                left, bottom + 2 / height, panel["title"], color=TEXT, fontsize=11, weight="bold"
            )
        else:
            DRAW[panel["type"]](grid.panel(fig, panel), panel, prom)
    buffer = io.BytesIO()
    fig.savefig(buffer, facecolor=BACKGROUND)
    plt.close(fig)
    # 256 colours are plenty for a dark dashboard: a third of the bytes.
    picture = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    parser.add_argument("--load-seconds", type=float, default=90)
    parser.add_argument("--prometheus", help="draw from this Prometheus instead (no load)")
    parser.add_argument("--minutes", type=float, default=60, help="with --prometheus")
    args = parser.parse_args(argv)
    board = json.loads(DASHBOARD.read_text())
    # SIGTERM unwinds like Ctrl-C, so the server and Prometheus are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.prometheus:
        end = time.time()
        prom = Prometheus(args.prometheus, board, end - args.minutes * 60, end)
        render(
            board, prom, args.out, f"Drawn by scripts/render_dashboard.py from {args.prometheus}."
        )
        return
    data = inputs()
    with (
        tempfile.TemporaryDirectory() as workdir,
        serve_and_scrape(Path(workdir)) as (url, prom_url),
    ):
        time.sleep(3 * SCRAPE_S)  # a few idle scrapes first
        start = time.time()
        print(f"load: {args.load_seconds:g} s, {WORKERS} clients -> {url}", file=sys.stderr)
        sent = run_load(url, args.load_seconds, data)
        end = time.time()
        time.sleep(3 * SCRAPE_S)  # the last scrapes and rule evaluations
        prom = Prometheus(prom_url, board, start - 2 * SCRAPE_S, end)
        note = (
            f"Not Grafana: each panel's queries sent to Prometheus {STEP_S} s apart and drawn by "
            f"scripts/render_dashboard.py. {sent['requests']} requests in {sent['seconds']} s from "
            f"{WORKERS} clients to a local cnnserve (CPU), scraped every {SCRAPE_S} s; "
            "out-of-distribution images (MNIST digits, noise) rise from 5 % to 60 % "
            "in the second half."
        )
        render(board, prom, args.out, note)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
