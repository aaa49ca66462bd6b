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


#: Grafana's named colours and its classic palette
COLORS = {"green": "#37872d", "yellow": "#e0b400", "red": "#c4162a", "orange": "#fa6400"}
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9",
           "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17"]


def threshold_color(value: float, panel: dict[str, Any]) -> str:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    color = "green"
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            color = step["color"]
    return COLORS.get(color, color)


def overrides(panel: dict[str, Any], name: str) -> dict[str, Any]:
    """The field-config override properties that apply to the series called ``name``."""
    props: dict[str, Any] = {}
    for o in panel["fieldConfig"].get("overrides", []):
        m = o["matcher"]
        if (m["id"] == "byName" and m["options"] == name) or (
                m["id"] == "byRegexp" and re.fullmatch(m["options"], name)):
            props.update({p["id"]: p["value"] for p in o["properties"]})
    return props


#: layout, inches: size of one dashboard grid row, margins and bands inside a panel
ROW_IN, FIG_W, MARGIN, GAP = 0.42, 18.0, 0.15, 0.12
TITLE_IN, TICKS_IN, LEGEND_ROW_IN, YLABELS_IN = 0.32, 0.3, 0.19, 0.8


def render(dashboard: dict[str, Any], prom: Prometheus, start: float, end: float,
           out: Path, step: float = 5.0, rate_interval: str = "20s") -> dict[str, int]:
    """Draw ``dashboard`` over [start, end] into ``out``; returns series drawn per panel.

    Laid out like Grafana: the dashboard's grid, a title on each panel, legends below the
    graphs, thresholds drawn as dashed lines where the panel says so, series that an
    override puts on the right axis drawn on a second axis, stat panels coloured by their
    thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 0.45
    fig_h = rows * ROW_IN + header + MARGIN
    fig = plt.figure(figsize=(FIG_W, fig_h), dpi=90)
    fig.patch.set_facecolor("white")
    fig.text(MARGIN / FIG_W, 1 - 0.3 / fig_h,
             f"{dashboard['title']}  ·  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(end))} UTC,"
             f" last {round((end - start) / 60)} min", fontsize=14, weight="bold", va="center")
    col_in = (FIG_W - 2 * MARGIN) / 24

    def rect(left: float, top: float, width: float, height: float) -> list[float]:
        """inches from the figure's top-left -> matplotlib's figure fraction"""
        return [left / FIG_W, 1 - (top + height) / fig_h, width / FIG_W, height / fig_h]

    drawn: dict[str, int] = {}
    for panel in panels:
        g = panel["gridPos"]
        left, top = MARGIN + g["x"] * col_in, header + g["y"] * ROW_IN
        width, height = g["w"] * col_in - GAP, g["h"] * ROW_IN - GAP
        box = fig.add_axes(rect(left, top, width, height))
        box.set_xticks([])
        box.set_yticks([])
        for spine in box.spines.values():
            spine.set_color("#d0d0d0")
        box.text(0.1 / width, 1 - 0.16 / height, panel["title"], transform=box.transAxes,
                 fontsize=10.5, weight="bold", va="center")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for t in panel["targets"]:
            expr = promql(t["expr"], rate_interval=rate_interval)
            for s in prom.query_range(expr, start, end, step):
                ts = np.array([float(v[0]) for v in s["values"]])
                vs = np.array([float(v[1]) for v in s["values"]])
                series.append((legend(t.get("legendFormat", ""), s["metric"]), ts, vs))
        drawn[panel["title"]] = len(series)
        if panel["type"] == "stat":
            # Grafana's default reduction: the last value that is not null/NaN
            last = next((float(v[np.isfinite(v)][-1]) for _, _, v in series
                         if np.isfinite(v).any()), math.nan)
            box.add_patch(plt.Rectangle((0.04, 0.08), 0.92, 1 - 0.08 - 0.32 / height,
                                        transform=box.transAxes,
                                        color=threshold_color(last, panel), alpha=0.9))
            box.text(0.5, 0.04 + (1 - 0.32 / height) / 2, format_value(last, unit),
                     ha="center", va="center", fontsize=20, color="white", weight="bold",
                     transform=box.transAxes)
            continue
        right = [name for name, _, _ in series
                 if overrides(panel, name).get("custom.axisPlacement") == "right"]
        ncol = max(1, min(len(series), int(width // 2.1)))
        legend_in = LEGEND_ROW_IN * math.ceil(len(series) / ncol) + 0.05 if series else 0.0
        right_in = YLABELS_IN if right else 0.15
        ax = fig.add_axes(rect(left + YLABELS_IN, top + TITLE_IN,
                               width - YLABELS_IN - right_in,
                               height - TITLE_IN - TICKS_IN - legend_in))
        ax2 = ax.twinx() if right else None
        handles = []
        for i, (name, ts, vs) in enumerate(series):
            target = ax2 if name in right and ax2 is not None else ax
            dates = [mdates.num2date(x / 86400.0) for x in ts]
            color = PALETTE[i % len(PALETTE)]
            (line,) = target.plot(dates, vs, label=name, lw=1.4, color=color)
            if target is ax:  # a filled right-axis series would hide the left one
                target.fill_between(dates, vs, 0, color=color, alpha=0.08, lw=0)
            handles.append(line)
        style = panel["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {})
        if style.get("mode") == "line":
            ymax = max((np.nanmax(v) for n, _, v in series
                        if n not in right and np.isfinite(v).any()), default=0.0)
            for step_ in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
                if step_["value"] is not None and step_["value"] <= 1.5 * ymax:
                    ax.axhline(step_["value"], color=COLORS.get(step_["color"], step_["color"]),
                               ls="--", lw=1.0)
        for a, names in ((ax, [n for n, _, _ in series if n not in right]), (ax2, right)):
            if a is None:
                continue
            u = overrides(panel, names[0]).get("unit", unit) if names and a is ax2 else unit
            a.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=u: format_value(v, u)))
            a.yaxis.set_major_locator(MaxNLocator(5))
            a.tick_params(labelsize=7.5, colors="#444444")
            a.set_ylim(bottom=0)
            for spine in ("top",) if a is ax2 else ("top", "right"):
                a.spines[spine].set_visible(False)
        ax.set_xlim(mdates.num2date(start / 86400.0), mdates.num2date(end / 86400.0))
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=8))
        ax.xaxis.set_major_formatter(
            mdates.DateFormatter("%H:%M:%S" if end - start < 600 else "%H:%M"))
        ax.grid(alpha=0.3)
        if series:
            fig.legend(handles=handles, loc="upper left", ncol=ncol, fontsize=8, frameon=False,
                       bbox_to_anchor=rect(left + YLABELS_IN - 0.1,
                                           top + height - legend_in, 0, 0)[:2],
                       handlelength=1.5, columnspacing=1.2, borderaxespad=0)
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
