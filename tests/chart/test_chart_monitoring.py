"""The Prometheus Operator objects and the shape of the shipped alerts (SPEC §8)."""

from __future__ import annotations

import re

import pytest
import yaml

from changegate.core.reasons import Category, ReasonCode

from .alerts import alerts, monitoring_values, runbook_sections
from .rendering import ci_values, kinds, merged, objects, one

DEFAULT = ci_values()["default-values.yaml"]
MONITORING_API = ("monitoring.coreos.com/v1",)

# SPEC §8's list, one alert (or more) each.
SPEC_ALERTS = {
    "ChangeGateRejectedChangeTrust", "ChangeGateRejectedChange", "ChangeGateBreakGlassUsed",
    "ChangeGateInvalidSignature", "ChangeGateWebhookDown", "ChangeGateWebhookReplicasLow",
    "ChangeGateWebhookSlow", "ChangeGateWebhookFailingOpen", "ChangeGateTier1ProtectionLoosened",
    "ChangeGateTrustOrPolicyLoosened", "ChangeGateConfigChanged", "ChangeGateUnexplainedChange",
    "ChangeGateWebhookConfigDrifted", "ChangeGateBreakGlassReviewOverdue",
    "ChangeGateNamespaceShortOfApprovers", "ChangeGateCanaryFailed",
}


def _reasons_in(expr, op):
    match = re.search(r'reason' + op + r'"([^"]+)"', expr)
    assert match, expr
    return set(match.group(1).split("|"))


def test_monitoring_follows_the_cluster_api_by_default():
    assert not {"PrometheusRule", "ServiceMonitor"} & kinds(objects(DEFAULT))
    found = kinds(objects(DEFAULT, api_versions=MONITORING_API))
    assert {"PrometheusRule", "ServiceMonitor"} <= found


def test_monitoring_can_be_forced_on_or_off():
    assert {"PrometheusRule", "ServiceMonitor"} <= kinds(objects(monitoring_values()))
    off = merged(DEFAULT, {"monitoring": {"enabled": False}})
    rendered = kinds(objects(off, api_versions=MONITORING_API))
    assert not {"PrometheusRule", "ServiceMonitor"} & rendered


def test_service_monitor_scrapes_both_components_metrics_ports():
    objs = objects(monitoring_values())
    monitor = one(objs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    for service in ("changegate-webhook", "changegate-operator"):
        svc = one(objs, "Service", service)
        assert selector.items() <= svc["metadata"]["labels"].items()
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}


def test_the_alerts_cover_spec_section_8():
    assert set(alerts()) >= SPEC_ALERTS


def test_every_alert_is_a_page_or_a_ticket_with_its_runbook_section():
    sections = runbook_sections()
    base = "https://github.com/changegate/changegate/blob/main/docs/alerts.md"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}"
        assert name in sections, f"docs/alerts.md has no section '## {name}'"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert sections == set(alerts()), "runbook sections without an alert"


def test_rejected_changes_page_only_for_the_trust_reasons():
    """ReasonCode's categories (docs/contracts.md is held to them by tests/unit)."""
    trust = {code.value for code in ReasonCode.of(Category.TRUST)}
    itself = {code.value for code in ReasonCode.of(Category.FAULT)}
    assert "signature_invalid" in trust and "no_approval" not in trust
    rules = alerts()
    page = rules["ChangeGateRejectedChangeTrust"]
    assert page["labels"]["severity"] == "page"
    assert _reasons_in(page["expr"], "=~") == trust
    ticket = rules["ChangeGateRejectedChange"]
    assert ticket["labels"]["severity"] == "ticket"
    assert _reasons_in(ticket["expr"], "!~") == trust | itself
    errors = rules["ChangeGateWebhookDenyingOnErrors"]
    assert _reasons_in(errors["expr"], "=~") == itself
    for name, rule in rules.items():
        if "changegate_rejected_changes_total" in rule["expr"] and name != page["alert"]:
            assert rule["labels"]["severity"] == "ticket", name


@pytest.mark.parametrize(("alert", "severity"), [
    ("ChangeGateBreakGlassUsed", "page"), ("ChangeGateInvalidSignature", "page"),
    ("ChangeGateWebhookDown", "page"), ("ChangeGateWebhookFailingOpen", "page"),
    ("ChangeGateTier1ProtectionLoosened", "page"), ("ChangeGateTrustOrPolicyLoosened", "page"),
    ("ChangeGateConfigChanged", "ticket"), ("ChangeGateConfigChangeDenied", "ticket"),
    ("ChangeGateUnexplainedChange", "page"),
    ("ChangeGateWebhookConfigDrifted", "page"), ("ChangeGateWebhookReplicasLow", "ticket"),
    ("ChangeGateBreakGlassReviewOverdue", "ticket"), ("ChangeGateCanaryFailed", "ticket"),
])
def test_severity(alert, severity):
    assert alerts()[alert]["labels"]["severity"] == severity


def test_review_overdue_is_the_operators_count_past_the_policy_review_deadline():
    """Each review is overdue by its own owedSince + reviewDeadline, which the operator
    reads from the policy the chart renders; a `for` on a count of reviews would time the
    oldest-ever one, not each."""
    rule = alerts()["ChangeGateBreakGlassReviewOverdue"]
    assert 'changegate_reviews_owed{state="overdue"}' in rule["expr"] and "for" not in rule
    values = monitoring_values(policy={"reviewDeadline": "12h"})
    policy = one(objects(values), "ConfigMap", "changegate-policy")["data"]["policy.yaml"]
    assert yaml.safe_load(policy)["reviewDeadline"] == "12h"


def test_slow_webhook_is_seen_from_both_sides():
    expr = alerts()["ChangeGateWebhookSlow"]["expr"]
    assert "changegate_admission_duration_seconds_bucket" in expr
    apiserver = "apiserver_admission_webhook_admission_duration_seconds_bucket"
    assert apiserver + '{name=~".*changegate.io"}' in expr


def test_webhook_liveness_alerts_follow_the_replica_count_and_external_url():
    rules = alerts(monitoring_values(webhook={"replicas": 5}))
    assert "< 5" in rules["ChangeGateWebhookReplicasLow"]["expr"]
    external = ci_values()["externalurl-values.yaml"]
    outside = alerts(merged(external, {"monitoring": {"enabled": True}}))
    assert "ChangeGateWebhookDown" not in outside
    assert "ChangeGateWebhookReplicasLow" not in outside


def test_alert_jobs_are_the_service_names_the_service_monitor_produces():
    rules = alerts()
    assert 'up{job="changegate-webhook"}' in rules["ChangeGateWebhookDown"]["expr"]
    assert 'up{job="changegate-operator"}' in rules["ChangeGateOperatorDown"]["expr"]
