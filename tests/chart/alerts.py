"""The shipped alert rules, taken from the rendered PrometheusRule."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .rendering import REPO, ci_values, merged, objects, one

RUNBOOK = REPO / "docs" / "alerts.md"


def monitoring_values(**extra: Any) -> dict[str, Any]:
    return merged(ci_values()["default-values.yaml"], {"monitoring": {"enabled": True}}, extra)


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule the chart renders: what Prometheus loads."""
    rule = one(objects(values or monitoring_values()), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups(values) for r in g["rules"] if "alert" in r}


def write_rules_file(path, values: dict[str, Any] | None = None) -> None:
    """A Prometheus rule file (promtool, prometheus --rules) of exactly the shipped rules."""
    path.write_text(yaml.safe_dump({"groups": rule_groups(values)}, sort_keys=False))


def runbook_sections() -> set[str]:
    return set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(), re.MULTILINE))
