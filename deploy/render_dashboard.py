"""Draw a Grafana dashboard as a PNG from a live Prometheus (no Grafana server needed).

Reads the dashboard JSON (panels, grid positions, queries, units, thresholds), runs every
query over a time range through Prometheus' HTTP API (``query_range``) and draws the panels
in the same grid with matplotlib: time series as lines, stat panels as their last value.
Used for docs/dashboard.png:

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --minutes 10 --out docs/dashboard.png

Also the place that turns a panel's query into plain PromQL (``promql``): Grafana's
``$__rate_interval`` and friends are substituted the way Grafana would.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DASHBOARD = Path(__file__).resolve().parent.parent / "grafana/dashboards/recall-worker.json"


@dataclass(frozen=True)
class Target:
    panel: dict[str, Any]
    expr: str
    legend: str


def targets(dashboard: dict[str, Any]) -> Iterator[Target]:
    """Every query of every panel, in panel order."""
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            yield Target(panel, t["expr"], t.get("legendFormat", ""))


def promql(expr: str, rate_interval: str = "20s", interval: str = "5s",
           range_: str = "10m") -> str:
    """A panel's query with Grafana's variables replaced by concrete durations."""
    subs = {"$__rate_interval": rate_interval, "$__interval": interval, "$__range": range_,
            "${__rate_interval}": rate_interval, "${__interval}": interval,
            "${__range}": range_}
    for var, value in subs.items():
        expr = expr.replace(var, value)
    if "$" in expr:
        raise ValueError(f"unknown dashboard variable in {expr!r}")
    return expr


class Prometheus:
    """The few calls of Prometheus' HTTP API this module and its tests need."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self.get("/api/v1/query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end,
                        step=step)["result"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend templating."""
    if not fmt:
        return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def format_value(value: float, unit: str) -> str:
    """A value in the panel's unit, the way an operator reads it."""
    if math.isnan(value):
        return "NaN"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} µs"
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    suffix = {"reqps": " req/s", "ops": " /s"}.get(unit, "")
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M{suffix}"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k{suffix}"
    return f"{value:.3g}{suffix}" if value != int(value) else f"{int(value)}{suffix}"


def threshold_color(value: float, panel: dict[str, Any]) -> str:
    colors = {"green": "#37872d", "yellow": "#e0b400", "red": "#c4162a", "orange": "#fa6400"}
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    color = "green"
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            color = step["color"]
    return colors.get(color, color)


def render(dashboard: dict[str, Any], prom: Prometheus, start: float, end: float,
           out: Path, step: float = 5.0, rate_interval: str = "20s") -> dict[str, int]:
    """Draw ``dashboard`` over [start, end] into ``out``; returns series drawn per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, rows * 0.42), dpi=90)
    fig.suptitle(f"{dashboard['title']} — {time.strftime('%Y-%m-%d %H:%M', time.gmtime(end))}"
                 f" UTC, last {round((end - start) / 60)} min", fontsize=13, y=0.995)
    grid = fig.add_gridspec(rows, 24, hspace=3.2, wspace=1.4, left=0.03, right=0.99,
                            top=0.965, bottom=0.02)
    drawn: dict[str, int] = {}
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        ax.set_title(panel["title"], fontsize=10, loc="left")
        series = []
        for t in panel["targets"]:
            expr = promql(t["expr"], rate_interval=rate_interval)
            for s in prom.query_range(expr, start, end, step):
                ts = np.array([float(v[0]) for v in s["values"]])
                vs = np.array([float(v[1]) for v in s["values"]])
                series.append((legend(t.get("legendFormat", ""), s["metric"]), ts, vs))
        drawn[panel["title"]] = len(series)
        if panel["type"] == "stat":
            ax.axis("off")
            last = next((float(v[-1]) for _, _, v in series if len(v)), math.nan)
            ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes,
                                       color=threshold_color(last, panel), alpha=0.85))
            ax.text(0.5, 0.45, format_value(last, unit), ha="center", va="center",
                    fontsize=17, color="white", weight="bold", transform=ax.transAxes)
            continue
        for name, ts, vs in series:
            ax.plot([mdates.num2date(x / 86400.0) for x in ts], vs, label=name, lw=1.3)
        for step_ in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
            if step_["value"] is not None and step_["color"] == "red":
                ymax = max((np.nanmax(v) for _, _, v in series if np.isfinite(v).any()),
                           default=0.0)
                if step_["value"] <= 1.5 * ymax:  # draw the line only when it is in view
                    ax.axhline(step_["value"], color="#c4162a", ls="--", lw=0.8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _p, u=unit: format_value(v, u)))
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="upper left", ncol=min(4, len(series)), framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://localhost:9090")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    parser.add_argument("--minutes", type=float, default=15.0, help="time range, ending now")
    parser.add_argument("--step", type=float, default=5.0, help="seconds between points")
    parser.add_argument("--rate-interval", default="20s",
                        help="value of $__rate_interval (Grafana: 4 x scrape interval)")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args(argv)
    try:
        dashboard = json.loads(args.dashboard.read_text())
    except (OSError, ValueError) as exc:
        print(f"render_dashboard: cannot read {args.dashboard}: {exc}", file=sys.stderr)
        return 2
    end = time.time()
    try:
        drawn = render(dashboard, Prometheus(args.prometheus), end - args.minutes * 60, end,
                       args.out, step=args.step, rate_interval=args.rate_interval)
    except OSError as exc:
        print(f"render_dashboard: cannot query {args.prometheus}: {exc}", file=sys.stderr)
        return 1
    empty = [title for title, n in drawn.items() if n == 0]
    print(f"wrote {args.out}: {len(drawn)} panels"
          + (f", no data in: {', '.join(empty)}" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
