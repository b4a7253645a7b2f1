"""The shipped Grafana dashboard queries only metrics the processes emit today.

(tests/e2e/test_dashboard.py evaluates every query against a real Prometheus scraping a
real serve and operator; this checks the names without a cluster.)
"""

from __future__ import annotations

import json
import re

from .rendering import CHART, REPO

DASHBOARD = CHART / "files" / "dashboards" / "changegate.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _emitted() -> set[str]:
    """Metric family names the controller registers (webhook and operator collectors)."""
    names: set[str] = set()
    for path in (REPO / "controller" / "changegate").rglob("*.py"):
        names |= set(re.findall(r"\"(changegate_[a-z_]+)\"", path.read_text()))
    return names


def _family(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def test_every_panel_queries_only_emitted_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    emitted = _emitted()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"changegate_[a-z_]+", target["expr"]):
                queried.add(name)
                assert name in emitted or _family(name) in emitted, (panel["title"], name)
    assert queried  # the regex found the queries at all


def test_the_dashboard_has_the_promised_panels():
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert titles == {"Admission decisions by reason", "Admission latency (webhook)",
                      "Break-glass changes", "ChangeApprovals by phase", "Reviews owed",
                      "Canary runs by result"}
