"""Draw the cicb Grafana dashboard to a PNG, from a real Prometheus, without Grafana.

    .venv/bin/python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 60

Reads deploy/grafana/dashboards/cicb.json, runs each panel's queries over the last
``--minutes`` (the query_range API) and draws the panels on the dashboard's grid with
matplotlib: timeseries as lines with their legends, stats as their last value. Writes
docs/dashboard.png (``--output``)."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter

ROOT = Path(__file__).resolve().parents[1]
# Grafana's units, as matplotlib writes them after a value.
UNITS = {"reqps": "req/s", "ops": "/s", "s": "s", "Bps": "B/s", "short": ""}


def substitute(expr: str, step_s: int, scrape_s: int) -> str:
    """Grafana's interval variables, as Grafana sets them for this step."""
    rate_s = max(step_s + scrape_s, 4 * scrape_s)
    return expr.replace("$__rate_interval", f"{rate_s}s").replace("$__interval", f"{step_s}s")


def legend(fmt: str, labels: dict[str, str]) -> str:
    """A series' name from the target's legendFormat (``{{label}}``), as Grafana writes it."""
    name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return name or json.dumps(labels)


def query(
    client: httpx.Client, expr: str, start: float, end: float, step_s: int
) -> list[dict[str, Any]]:
    answer = client.get(
        "/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step_s}
    )
    if answer.status_code == 400:  # a bad query: say which
        raise SystemExit(f"{expr}: {answer.json()['error']}")
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def draw_timeseries(
    ax: Any,
    lines: list[tuple[str, list[datetime], list[float]]],
    unit: str,
    span: tuple[float, float],
) -> None:
    for name, times, values in lines:
        ax.plot(times, values, linewidth=1, label=name)
    ax.set_xlim(*(datetime.fromtimestamp(t) for t in span))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=False))
    if unit in ("s", "B/s"):  # 5 ms, 2 MB/s
        ax.yaxis.set_major_formatter(EngFormatter(unit=unit))
    elif unit:
        ax.set_ylabel(unit, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.2)
    if lines:
        ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.5)


def draw_stat(ax: Any, lines: list[tuple[str, list[datetime], list[float]]], unit: str) -> None:
    ax.set_axis_off()
    values = [v for _, _, vs in lines for v in vs[-1:] if not math.isnan(v)]
    text = f"{values[0]:.4g} {unit}".strip() if values else "No data"
    ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=20, transform=ax.transAxes)


def render(dashboard: dict[str, Any], prometheus: str, minutes: int, scrape_s: int) -> Any:
    panels = dashboard["panels"]
    end = time.time()
    start = end - minutes * 60
    step_s = max(scrape_s, minutes * 60 // 240)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    plt.style.use("dark_background")
    # One grid row is 0.35 in; the page has 0.5 in above for the title.
    width, height = 20.0, rows * 0.35 + 0.5
    figure = plt.figure(figsize=(width, height))
    figure.suptitle(f"{dashboard['title']}: the last {minutes} minutes", y=1 - 0.15 / height)
    with httpx.Client(base_url=prometheus, timeout=30) as client:
        for panel in panels:
            pos = panel["gridPos"]
            # The panel's cell, less room for its title above and the time axis below.
            left, right = pos["x"] / 24 * width + 0.5, (pos["x"] + pos["w"]) / 24 * width - 0.15
            top, bottom = pos["y"] * 0.35 + 0.5 + 0.3, (pos["y"] + pos["h"]) * 0.35 + 0.5 - 0.3
            ax = figure.add_axes(
                (left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height)
            )
            unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "short"), "")
            ax.set_title(panel["title"], fontsize=9, loc="left")
            lines = []
            for target in panel["targets"]:
                expr = substitute(target["expr"], step_s, scrape_s)
                for series in query(client, expr, start, end, step_s):
                    times = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                    values = [float(v) for _, v in series["values"]]
                    name = legend(target.get("legendFormat", ""), series["metric"])
                    lines.append((name, times, values))
            if panel["type"] == "stat":
                draw_stat(ax, lines, unit)
            else:
                draw_timeseries(ax, lines, unit, (start, end))
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=int, default=60, help="how far back to draw")
    parser.add_argument("--scrape-interval", type=int, default=15, help="seconds")
    parser.add_argument(
        "--dashboard", type=Path, default=ROOT / "deploy/grafana/dashboards/cicb.json"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs/dashboard.png")
    args = parser.parse_args()
    dashboard = json.loads(args.dashboard.read_text())
    figure = render(dashboard, args.prometheus, args.minutes, args.scrape_interval)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
