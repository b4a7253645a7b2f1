"""Every alert in the shipped PrometheusRule is fed by a metric something really emits: the
webhook's or the operator's own /metrics (the families their registries expose), the
API server's admission metrics, or Prometheus' own `up`. An alert on a metric nothing
emits can never fire; this fails on the first one."""

from __future__ import annotations

import re

from changegate.operator.metrics import OperatorMetrics

from .alerts import rule_groups

# PromQL words that look like metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}
# Emitted by kube-apiserver (k8s.io/apiserver admission metrics), scraped as job apiserver;
# tests/e2e/test_stories_operator_record.py reads them from the real API server.
KUBE_APISERVER = {"apiserver_admission_webhook_admission_duration_seconds_bucket",
                  "apiserver_admission_webhook_fail_open_count"}
PROMETHEUS = {"up"}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names in a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no string contents
    text = re.sub(r"\{[^}]*\}", "", text)  # no label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # no ranges
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def exposed(exposition: bytes) -> set[str]:
    """Sample names a /metrics page can carry, from its `# TYPE` lines."""
    out = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition.decode(), re.MULTILINE):
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def emitted() -> set[str]:
    from changegate.webhook import metrics as webhook_metrics
    return (exposed(webhook_metrics.exposition()) | exposed(OperatorMetrics().exposition())
            | KUBE_APISERVER | PROMETHEUS)


def test_the_parser_finds_metrics_and_only_metrics():
    assert metric_names('sum by (namespace, kind) (increase(changegate_x_total{a="b|c"}[10m])'
                        ' > 0) or (changegate_x_total unless changegate_x_total offset 10m)'
                        ' < on() group_left() changegate:required:policy') == {
        "changegate_x_total", "changegate:required:policy"}


def test_every_alert_reads_only_metrics_something_emits():
    groups = rule_groups()
    records = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    known = emitted() | records
    missing = {}
    for g in groups:
        for rule in g["rules"]:
            names = metric_names(rule["expr"]) - known
            if names:
                missing[rule.get("alert") or rule.get("record")] = sorted(names)
    assert not missing, f"alerts on metrics nothing emits: {missing}"


def test_every_alert_reads_some_metric():
    for g in rule_groups():
        for rule in g["rules"]:
            if "alert" in rule:
                assert metric_names(rule["expr"]), rule["alert"]
