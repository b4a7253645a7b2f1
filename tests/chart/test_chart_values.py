"""Values: the chart refuses unsafe installs, rejects typos, and renders the SPEC's files."""

from __future__ import annotations

import re

import pytest
import yaml
from helm_python import HelmRenderError, HelmValuesError

from .rendering import CHART, REQUIRED, ci_values, config_map_data, merged, objects

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]

# SPEC §9, "Policy (a file, or the key policy.yaml of a ConfigMap), every key optional".
SPEC_POLICY_KEYS = {
    "tierSelector", "enforcement", "clusterName", "requiredApprovals", "gatedOperations",
    "changeRecordPattern", "maxApprovalLifetime", "breakGlassGroups", "ignoredAnnotations",
    "ignoredLabels", "autoscaled", "dryRun", "trustedCreators", "policyAdminGroups",
    "scaleExemptUsers", "maxCanaryReplicas", "canaryMinApprovals", "requireImageDigests",
    "allowServiceAccountApprovers", "reviewDeadline", "atomicRecords", "exemptWriters",
    "restartWriters", "restartAnnotations", "approvalRetention", "automation",
    "seniorApprovals", "requireAssistanceDeclaration",
}


def _without(path):
    values = merged(REQUIRED)
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node[key]
    del node[leaf]
    return values


@pytest.mark.parametrize(("missing", "message"), [
    ("policy.clusterName", "set policy.clusterName"),
    ("policy.policyAdminGroups", "set policy.policyAdminGroups"),
    ("policy.breakGlassGroups", "set policy.breakGlassGroups"),
])
def test_install_is_refused_without_a_required_value(missing, message):
    with pytest.raises(HelmRenderError, match=message):
        objects(_without(missing))


def test_install_is_refused_with_empty_required_lists():
    with pytest.raises(HelmRenderError, match="policyAdminGroups"):
        objects(merged(REQUIRED, {"policy": {"policyAdminGroups": []}}))
    with pytest.raises(HelmRenderError, match="breakGlassGroups"):
        objects(merged(REQUIRED, {"policy": {"breakGlassGroups": []}}))


def test_install_is_refused_with_no_values_at_all():
    with pytest.raises(HelmRenderError, match="changegate: set policy"):
        objects({})


def test_break_glass_can_be_switched_off_explicitly_but_not_half_way():
    values = merged(_without("policy.breakGlassGroups"), {"breakGlass": {"enabled": False}})
    assert config_map_data(objects(values), "changegate-policy", "policy.yaml")[
        "breakGlassGroups"] == []
    with pytest.raises(HelmRenderError, match=r"breakGlass\.enabled is false"):
        objects(merged(REQUIRED, {"breakGlass": {"enabled": False}}))


@pytest.mark.parametrize(("extra", "message"), [
    ({"tls": {"certManager": {"enabled": True}, "existingSecret": "x"}}, "choose one"),
    ({"tls": {"existingSecret": "mine"}}, "needs webhook.caBundle"),
    ({"webhook": {"externalURL": "https://127.0.0.1:8443"},
      "tls": {"certManager": {"enabled": True}}}, "externalURL"),
])
def test_inconsistent_combinations_are_refused(extra, message):
    with pytest.raises(HelmRenderError, match=message):
        objects(merged(REQUIRED, extra))


def test_installing_into_kube_system_is_refused():
    from .rendering import _chart
    with pytest.raises(HelmRenderError, match="namespace of its own"):
        _chart().render(REQUIRED, name="changegate", namespace="kube-system")


@pytest.mark.parametrize("typo", [
    {"webhooks": {"replicas": 3}},
    {"webhook": {"replica": 3}},
    {"webhook": {"timeoutSeconds": 31}},
    {"policy": {"clustername": "prod"}},
    {"policy": {"requiredApprovals": 0}},
    {"policy": {"enforcement": "audit"}},
    {"policy": {"gatedOperations": ["PATCH"]}},
    {"policy": {"reviewDeadline": "1 day"}},
    {"policy": {"tierSelector": {"tier": 1}}},
    {"policy": {"tierSelector": {"tier": None}}},  # an empty selector would gate everything
    {"policy": {"exemptWriters": [{"user": ["x"], "kinds": ["ConfigMap"], "names": ["x"]}]}},
    {"trustStore": {"approver": []}},
    {"trustStore": {"approvers": [{"name": "bob", "key": ["x"]}]}},
    {"trustStore": {"approvers": [{"name": "bob", "keys": ["not a PEM"]}]}},
    {"monitoring": {"enabled": "yes"}},
    {"monitoring": {"prometheusRule": {"runbookURL": "x"}}},
    {"tls": {"certmanager": {"enabled": True}}},
    {"image": {"digest": "latest"}},
])
def test_a_typo_in_values_fails_the_install(typo):
    with pytest.raises(HelmValuesError, match="schema"):
        objects(merged(REQUIRED, typo))


def test_every_ci_values_file_passes_the_schema():
    for values in CI_VALUES.values():
        objects(values)


def test_policy_values_are_exactly_the_spec_keys_with_the_spec_defaults():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    assert set(defaults) == SPEC_POLICY_KEYS
    assert defaults["tierSelector"] == {"tier": "tier-1"}
    assert defaults["requiredApprovals"] == 2
    assert defaults["gatedOperations"] == ["CREATE", "UPDATE", "DELETE"]
    assert defaults["maxApprovalLifetime"] == "24h"
    assert defaults["reviewDeadline"] == "24h"
    assert defaults["approvalRetention"] == "30d"
    assert defaults["scaleExemptUsers"] == [
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "system:kube-controller-manager"]
    assert defaults["restartAnnotations"] == ["kubectl.kubernetes.io/restartedAt"]
    assert (defaults["enforcement"], defaults["dryRun"]) == ("deny", "warn")
    assert defaults["atomicRecords"] is True
    assert defaults["requireImageDigests"] is False
    assert defaults["automation"] == {"users": [], "groups": []}
    assert defaults["seniorApprovals"] == 1
    assert defaults["requireAssistanceDeclaration"] is False


def test_policy_configmap_renders_the_policy_values_verbatim():
    for values in CI_VALUES.values():
        objs = objects(values)
        expected = merged(yaml.safe_load((CHART / "values.yaml").read_text())["policy"],
                          values["policy"])
        assert config_map_data(objs, "changegate-policy", "policy.yaml") == expected


def test_trust_configmap_renders_the_approvers():
    values = CI_VALUES["ha-values.yaml"]
    trust = config_map_data(objects(values), "changegate-trust", "approvers.yaml")
    assert trust == {"approvers": values["trustStore"]["approvers"]}
    empty = config_map_data(objects(DEFAULT), "changegate-trust", "approvers.yaml")
    assert empty == {"approvers": []}


def test_the_webhook_accepts_the_policy_and_trust_store_the_chart_renders():
    policy = pytest.importorskip("changegate.core.policy")
    trust = pytest.importorskip("changegate.core.trust")
    for name, values in CI_VALUES.items():
        objs = objects(values)
        cms = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
        loaded = policy.load_policy(cms["changegate-policy"]["policy.yaml"])
        assert loaded.clusterName == values["policy"]["clusterName"], name
        store = trust.load_trust_store(cms["changegate-trust"]["approvers.yaml"])
        assert len(store) == sum(
            len(a["keys"]) for a in values.get("trustStore", {}).get("approvers", [])), name


def test_every_value_is_commented():
    """cert-manager's style: each key in values.yaml says why it has its value."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][\w.-]*):")
    uncommented = []
    for i, line in enumerate(lines):
        if not key.match(line):
            continue
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if not previous.strip().startswith("#") and "#" not in line:
            uncommented.append(line.strip())
    assert uncommented == []


def test_schema_forbids_unknown_keys_at_every_level():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())

    def walk(node, where):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for name, child in node["properties"].items():
                walk(child, f"{where}.{name}")
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "values")


def test_the_policy_model_reads_exactly_the_keys_the_chart_renders():
    # SPEC §9's policy keys, as the core parses them: a key the chart renders that the core
    # does not know would be refused at load, and one the core knows that the chart cannot
    # render is a setting nobody can make.
    from changegate.core.policy import Policy

    keys = {field.alias or name for name, field in Policy.model_fields.items()}
    assert keys == SPEC_POLICY_KEYS
