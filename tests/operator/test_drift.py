"""Webhook configuration drift (drift.py), against the chart's own rendering: the live
object as the API server stores it matches; emergency-off, a loosened selector, a removed
matchCondition, a swapped caBundle or a deleted entry each drift."""

from __future__ import annotations

import copy

import pytest
import yaml

from changegate.operator.drift import differences, load_expected
from tests.chart.rendering import ci_values, objects, one


@pytest.fixture(scope="module")
def rendered():
    objs = objects(ci_values()["default-values.yaml"])
    expected = load_expected(one(objs, "ConfigMap", "changegate-config")["data"]["webhooks.yaml"])
    return expected, one(objs, "ValidatingWebhookConfiguration")


def defaulted(vwc):
    """What the API server adds when it stores the rendering."""
    live = copy.deepcopy(vwc)
    for entry in live["webhooks"]:
        entry.setdefault("objectSelector", {})
        entry.setdefault("namespaceSelector", {})
        entry.setdefault("matchPolicy", "Equivalent")
        entry.setdefault("timeoutSeconds", 10)
    return live


def test_the_chart_publishes_exactly_the_entries_it_registers(rendered):
    expected, vwc = rendered
    assert expected == vwc["webhooks"]
    assert differences(expected, defaulted(vwc)) == []


def test_emergency_off_is_drift(rendered):
    expected, vwc = rendered
    live = defaulted(vwc)
    live["webhooks"][0]["failurePolicy"] = "Ignore"
    assert differences(expected, live) == [f"{live['webhooks'][0]['name']}: failurePolicy differs"]


@pytest.mark.parametrize("change,what", [
    (lambda e: e.update(namespaceSelector={}), "namespaceSelector differs"),
    (lambda e: e.update(objectSelector={"matchLabels": {"gated": "yes"}}),
     "objectSelector differs"),
    (lambda e: e["rules"][0].update(operations=["CREATE"]), "rules differs"),
    (lambda e: e["clientConfig"].update(caBundle="QUJD"), "caBundle differs"),
])
def test_each_loosening_is_drift(rendered, change, what):
    expected, vwc = rendered
    live = defaulted(vwc)
    change(live["webhooks"][0])
    assert differences(expected, live) == [f"{live['webhooks'][0]['name']}: {what}"]


def test_a_removed_match_condition_or_entry_and_a_deleted_configuration_drift(rendered):
    expected, vwc = rendered
    live = defaulted(vwc)
    scale = next(e for e in live["webhooks"] if e["name"] == "scale.changegate.io")
    scale["matchConditions"] = scale["matchConditions"][:1]
    del live["webhooks"][0]
    assert differences(expected, live) == [
        f"entry {vwc['webhooks'][0]['name']} is missing",
        "scale.changegate.io: matchConditions differs"]
    assert differences(expected, None) == ["ValidatingWebhookConfiguration changegate is missing"]


def test_the_rendering_must_be_a_list_of_named_entries():
    with pytest.raises(ValueError):
        load_expected(yaml.safe_dump({"webhooks": []}))
    with pytest.raises(ValueError):
        load_expected("[: not yaml")
