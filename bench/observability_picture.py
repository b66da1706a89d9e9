"""Draws the dashboard's key panels from a real run into a PNG (the README's picture).

    OBSERVABILITY_PICTURE_DATA=/tmp/run.json python -m pytest tests/e2e/test_observability.py
    python bench/observability_picture.py /tmp/run.json docs/observability.png

The JSON holds, per dashboard panel title, Prometheus' `query_range` answer for each of the
panel's queries (with its legend) over the test run (tests/e2e/test_observability.py writes
it). Needs matplotlib (`pip install -e '.[docs]'`); the daemon never imports it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

#: The panels drawn, in reading order (titles of deploy/grafana/alicom-receipts.json).
KEY_PANELS = (
    "Receipts received per second",
    "Outcomes per second",
    "Queue lag (p50, p99)",
    "Poll errors by kind",
    "Delivery success rate",
    "Push answer time (p50, p99)",
    "Token expires in",
    "Live processes by host and role",
)


def _label(metric: dict[str, str], legend: str) -> str:
    """Grafana's legend template filled in; a label the series lacks shows as "-"."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: metric.get(m.group(1), "-"), legend) or "value"


def draw(data: dict[str, Any], out: Path) -> None:
    start = float(data["start"])
    fig, axes = plt.subplots(4, 2, figsize=(12, 12), constrained_layout=True)
    for ax, title in zip(axes.flat, KEY_PANELS, strict=True):
        for target in data["series"][title]:
            for series in target["result"]:
                points = [(float(t) - start, float(v)) for t, v in series["values"]
                          if math.isfinite(float(v))]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, label=_label(series["metric"], target["legend"]))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("alicom-receipts: two hosts, push and reconcile against the sandbox with "
                 "faults (Prometheus, scraped every second)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    draw(json.loads(Path(argv[0]).read_text(encoding="utf-8")), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
