"""Story 12: the shipped Grafana dashboard shows what happened. A real Prometheus scrapes the
stories' real `changegate serve` and `changegate operator` (jobs named as the chart's
ServiceMonitor names them); after a denial, a break-glass change and a pending request,
every panel's query, exactly as shipped in charts/changegate/files/dashboards/, returns
series showing them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART
from tests.cluster import free_port

from .stories import Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = CHART / "files" / "dashboards" / "changegate.json"
# What Grafana substitutes for its range variables (at the default 6 h range and a 30 s
# scrape, $__rate_interval is about 2 minutes); both windows hold the whole story.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__range": "10m"}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:  # loopback only
        return json.loads(answer.read())


@pytest.fixture
def prometheus(gate: Gate, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "changegate-webhook",
             "static_configs": [{"targets": [f"127.0.0.1:{gate.metrics_port}"]}]},
            {"job_name": "changegate-operator",
             "static_configs": [{"targets": [f"127.0.0.1:{gate.operator_port}"]}]},
        ]}))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.2)
        # A first sample of both targets before the story: a rate or increase needs the
        # counters' values from before it, or the story's requests are their baseline.
        while {s["metric"]["job"] for s in _query(url, "up == 1")} != {
                "changegate-webhook", "changegate-operator"}:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus scraped no target within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        Gate._stop(process)  # terminate, and kill after 15 s
        log.close()


def _queries() -> dict[str, list[str]]:
    """Panel title -> its queries, with Grafana's variables filled in."""
    out = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs = []
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"a Grafana variable the test does not fill: {expr}"
            exprs.append(expr)
        out[panel["title"]] = exprs
    return out


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    body = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    series: list[dict[str, Any]] = body["data"]["result"]
    return series


def _until_all(url: str, checks: list[tuple[str, str, Any]]) -> None:
    """Until every (what, query, shows) check holds at once: series, showing the story."""
    deadline = time.monotonic() + 60
    while True:
        failing = []
        for what, expr, shows in checks:
            series = _query(url, expr)
            if not (series and shows(series)):
                failing.append(f"{what}: {expr} returned {series}")
        if not failing:
            return
        if time.monotonic() > deadline:
            raise AssertionError("\n".join(failing))
        time.sleep(1)


def _values(series: list[dict[str, Any]]) -> list[float]:
    return [float(x["value"][1]) for x in series]


def test_every_dashboard_panel_returns_the_story(gate: Gate, prometheus: str, tmp_path: Path):
    ns = gate.namespace("s12-dashboard", deployment("checkout", "1.41.0"))
    # A change without approvals: denied.
    r = gate.kubectl("alice", "set", "image", "deploy/checkout",
                     "checkout=registry.example/checkout:1.42.0", "-n", ns)
    assert r.rc == 1 and "reason: no_approval" in r.err, r.text
    # dana (sre-oncall) changes it by break-glass.
    glass = write_manifest(tmp_path / "glass.yaml", deployment(
        "checkout", "1.40.3", annotations={"changegate.io/break-glass": "INC-12 rollback"}))
    r = gate.kubectl("dana", "apply", "-n", ns, "-f", str(glass))
    assert r.rc == 0, r.text
    # alice asks for a change: a ChangeApproval waiting for approvals.
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    r = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-1201")
    assert r.rc == 0, r.text

    queries = _queries()
    [decisions] = queries["Admission decisions by reason"]
    p50, p99 = queries["Admission latency (webhook)"]
    [glass_query] = queries["Break-glass changes"]
    by_phase, waiting = queries["ChangeApprovals by phase"]
    [owed] = queries["Reviews owed"]
    [canary_runs] = queries["Canary runs by result"]
    _until_all(prometheus, [
        ("decisions by reason", decisions,
         lambda s: {("denied", "no_approval"), ("allowed", "break_glass")}
         <= {(x["metric"].get("decision"), x["metric"].get("reason")) for x in s}),
        # NaN would mean no requests in the window; the webhook answers in milliseconds.
        ("latency p50", p50, lambda s: all(0 < v < 5 for v in _values(s))),
        ("latency p99", p99, lambda s: all(0 < v < 5 for v in _values(s))),
        ("break-glass changes", glass_query, lambda s: any(
            x["metric"].get("namespace") == ns and float(x["value"][1]) > 0 for x in s)),
        ("ChangeApprovals by phase", by_phase, lambda s: any(
            x["metric"].get("phase") == "Pending" and float(x["value"][1]) >= 1 for x in s)),
        ("waiting for approvals", waiting, lambda s: _values(s)[0] >= 1),
        # dana's break-glass owes a review (the operator's resync is 10 s here).
        ("reviews owed", owed, lambda s: any(
            x["metric"].get("state") == "pending" and float(x["value"][1]) >= 1 for x in s)),
        # No canary ran in this story: every result is exported at 0 from the start, so
        # the panel (and the canary alert's increase()) sees the first run that ends.
        ("canary runs by result", canary_runs, lambda s: {"promoted", "unhealthy"}
         <= {x["metric"].get("result") for x in s}),
    ])
    assert len(queries) == 6  # every panel was checked above
