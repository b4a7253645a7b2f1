"""The webhook configuration is fail-closed and matches exactly what SPEC §5 gates."""

from __future__ import annotations

import copy

import pytest

from .cel import calls_webhook
from .rendering import (
    CI_VALUES_NAMES,
    NAMESPACE,
    REQUIRED,
    ci_values,
    merged,
    objects,
    one,
    webhooks,
)

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]
ENTRIES = {
    "deployments.changegate.io", "configmaps.changegate.io", "changeapprovals.changegate.io",
    "scale.changegate.io", "namespaces.changegate.io", "config.changegate.io",
}
TIER_ENTRIES = {"deployments.changegate.io", "configmaps.changegate.io", "scale.changegate.io"}
SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease"}


def _not_in(selector):
    [expr] = [e for e in selector.get("matchExpressions", [])
              if e["key"] == "kubernetes.io/metadata.name"]
    assert expr["operator"] == "NotIn"
    return set(expr["values"])


@pytest.mark.parametrize("name", CI_VALUES_NAMES)
def test_every_entry_fails_closed_without_side_effects(name):
    values = merged(CI_VALUES[name])
    timeout = values.get("webhook", {}).get("timeoutSeconds", 5)
    entries = webhooks(values)
    assert set(entries) == ENTRIES
    for entry in entries.values():
        assert entry["failurePolicy"] == "Fail", entry["name"]
        assert entry["sideEffects"] == "None", entry["name"]
        assert entry["admissionReviewVersions"] == ["v1"], entry["name"]
        assert entry["matchPolicy"] == "Equivalent", entry["name"]
        assert entry["timeoutSeconds"] == timeout, entry["name"]
        client = entry["clientConfig"]
        assert client.get("service", {}).get("path", "/validate") == "/validate"
        assert client.get("url", "/validate").endswith("/validate")


@pytest.mark.parametrize("name", CI_VALUES_NAMES)
def test_no_rule_intercepts_status_or_uses_wildcards(name):
    for entry in webhooks(CI_VALUES[name]).values():
        for rule in entry["rules"]:
            for field in ("apiGroups", "apiVersions", "resources", "operations"):
                assert "*" not in rule[field], (entry["name"], field)
            for resource in rule["resources"]:
                assert not resource.endswith("/status"), entry["name"]
                assert resource in {"deployments", "configmaps", "changeapprovals",
                                    "deployments/scale", "namespaces"}


@pytest.mark.parametrize("name", CI_VALUES_NAMES)
def test_tier_entries_select_the_tier_and_exclude_system_and_own_namespace(name):
    values = merged({"policy": {"tierSelector": {"tier": "tier-1"}}}, CI_VALUES[name])
    for entry_name in TIER_ENTRIES:
        selector = webhooks(values)[entry_name]["namespaceSelector"]
        assert selector["matchLabels"] == values["policy"]["tierSelector"]
        assert _not_in(selector) == SYSTEM_NAMESPACES | {NAMESPACE}


def test_gated_operations_come_from_the_policy():
    assert webhooks(DEFAULT)["deployments.changegate.io"]["rules"][0]["operations"] == [
        "CREATE", "UPDATE", "DELETE"]
    values = merged(DEFAULT, {"policy": {"gatedOperations": ["UPDATE", "DELETE"]}})
    for name in ("deployments.changegate.io", "configmaps.changegate.io"):
        [rule] = webhooks(values)[name]["rules"]
        assert rule["operations"] == ["UPDATE", "DELETE"]


def test_gated_kinds_are_apps_v1_deployments_and_v1_configmaps():
    entries = webhooks(DEFAULT)
    [deploy] = entries["deployments.changegate.io"]["rules"]
    assert (deploy["apiGroups"], deploy["apiVersions"], deploy["resources"]) == (
        ["apps"], ["v1"], ["deployments"])
    [cm] = entries["configmaps.changegate.io"]["rules"]
    assert (cm["apiGroups"], cm["apiVersions"], cm["resources"]) == ([""], ["v1"], ["configmaps"])


def test_change_approvals_are_validated_in_every_namespace_but_kube_system_and_our_own():
    entry = webhooks(DEFAULT)["changeapprovals.changegate.io"]
    assert "matchLabels" not in entry["namespaceSelector"]
    assert _not_in(entry["namespaceSelector"]) == {"kube-system", NAMESPACE}
    [rule] = entry["rules"]
    assert rule["apiGroups"] == ["changegate.io"]
    assert rule["apiVersions"] == ["v1alpha1"]
    assert rule["resources"] == ["changeapprovals"]
    assert rule["operations"] == ["CREATE", "UPDATE"]


def test_metadata_only_updates_of_approvals_never_call_the_webhook():
    """The operator's finalizer must be removable while the webhook is down or the policy broken."""
    entry = webhooks(DEFAULT)["changeapprovals.changegate.io"]
    spec = {"operation": "UPDATE", "signatures": []}
    signed = {**spec, "signatures": [{"keyid": "k", "sig": "s"}]}

    def call(operation, old, new):
        return calls_webhook(entry, request={"operation": operation},
                             object={"metadata": {}, "spec": new},
                             oldObject=None if old is None else {"metadata": {}, "spec": old})

    assert not call("UPDATE", spec, spec)
    assert call("UPDATE", spec, signed)
    assert call("CREATE", None, spec)


# --- scale guard -------------------------------------------------------------------

def _scale(user, old, new):
    spec = lambda n: {} if n == 0 else {"replicas": n}  # noqa: E731  Scale omits 0
    return {"request": {"userInfo": {"username": user}, "operation": "UPDATE"},
            "object": {"kind": "Scale", "spec": spec(new)},
            "oldObject": {"kind": "Scale", "spec": spec(old)}}


def test_scale_guard_sees_only_scale_downs_by_non_exempt_users():
    entry = webhooks(DEFAULT)["scale.changegate.io"]
    [rule] = entry["rules"]
    assert rule["resources"] == ["deployments/scale"]
    assert rule["operations"] == ["UPDATE"]
    hpa = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
    assert calls_webhook(entry, **_scale("alice", 3, 1))
    assert calls_webhook(entry, **_scale("alice", 3, 0))      # to zero: replicas omitted
    assert not calls_webhook(entry, **_scale("alice", 3, 5))  # scale-up
    assert not calls_webhook(entry, **_scale("alice", 0, 2))  # up from zero
    assert not calls_webhook(entry, **_scale("alice", 3, 3))
    assert not calls_webhook(entry, **_scale(hpa, 3, 1))      # the autoscaler, even down
    assert not calls_webhook(entry, **_scale("system:kube-controller-manager", 3, 1))


def test_scale_exempt_users_come_from_the_policy():
    keda = "system:serviceaccount:keda:keda-operator"
    values = merged(DEFAULT, {"policy": {"scaleExemptUsers": [keda]}})
    entry = webhooks(values)["scale.changegate.io"]
    assert not calls_webhook(entry, **_scale(keda, 3, 0))
    hpa = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
    assert calls_webhook(entry, **_scale(hpa, 3, 0))


# --- namespace guard ---------------------------------------------------------------

def _namespace(name, labels, operation="UPDATE"):
    meta = {"name": name} if labels is None else {"name": name, "labels": labels}
    return {"request": {"operation": operation, "name": name},
            "object": None if operation == "DELETE" else {"metadata": meta},
            "oldObject": {"metadata": meta}}


def test_namespace_guard_matches_namespaces_directly_update_and_delete():
    entry = webhooks(DEFAULT)["namespaces.changegate.io"]
    assert "namespaceSelector" not in entry
    assert "objectSelector" not in entry
    [rule] = entry["rules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"], rule["scope"]) == (
        [""], ["namespaces"], ["UPDATE", "DELETE"], "Cluster")


def test_namespace_guard_sends_only_namespaces_that_were_in_the_tier():
    entry = webhooks(DEFAULT)["namespaces.changegate.io"]
    assert calls_webhook(entry, **_namespace("payments", {"tier": "tier-1"}))
    assert calls_webhook(entry, **_namespace("payments", {"tier": "tier-1"}, "DELETE"))
    assert not calls_webhook(entry, **_namespace("payments", {"tier": "tier-2"}))
    assert not calls_webhook(entry, **_namespace("sandbox", {"team": "x"}))  # no tier key
    assert not calls_webhook(entry, **_namespace("sandbox", None))           # no labels
    assert not calls_webhook(entry, **_namespace("kube-system", {"tier": "tier-1"}))
    assert not calls_webhook(entry, **_namespace(NAMESPACE, {"tier": "tier-1"}))


def test_namespace_guard_follows_a_multi_label_tier_selector():
    selector = {"tier": "tier-1", "changegate.io/managed": "true"}
    values = merged(DEFAULT, {"policy": {"tierSelector": selector}})
    entry = webhooks(values)["namespaces.changegate.io"]
    assert calls_webhook(entry, **_namespace("payments", dict(selector, team="x")))
    assert not calls_webhook(entry, **_namespace("payments", {"tier": "tier-1"}))


# --- config guard ------------------------------------------------------------------

def _configmap(name, operation, old_data=None, new_data=None):
    old = None if old_data is None else {"metadata": {"name": name}, "data": old_data}
    new = None if new_data is None else {"metadata": {"name": name}, "data": new_data}
    return {"request": {"operation": operation, "name": name}, "object": new, "oldObject": old}


def test_config_guard_covers_trust_policy_config_and_ledger_in_our_namespace_only():
    entry = webhooks(DEFAULT)["config.changegate.io"]
    [expr] = entry["namespaceSelector"]["matchExpressions"]
    assert (expr["key"], expr["operator"], expr["values"]) == (
        "kubernetes.io/metadata.name", "In", [NAMESPACE])
    [rule] = entry["rules"]
    assert rule["resources"] == ["configmaps"]
    assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
    # changegate-config names policyAdminGroups and breakGlassGroups: editing it unguarded
    # would make anyone an admin at the next restart.
    for name in ("changegate-trust", "changegate-policy", "changegate-config",
                 "changegate-ledger-0", "changegate-ledger-f"):
        assert calls_webhook(entry, **_configmap(name, "UPDATE", {"a": "1"}, {"a": "2"}))
        assert calls_webhook(entry, **_configmap(name, "DELETE", {"a": "1"}))
        assert calls_webhook(entry, **_configmap(name, "CREATE", None, {"a": "1"}))
    for name in ("changegate-info", "kube-root-ca.crt"):
        assert not calls_webhook(entry, **_configmap(name, "UPDATE", {"a": "1"}, {"a": "2"}))


def test_config_guard_skips_updates_that_change_no_data():
    entry = webhooks(DEFAULT)["config.changegate.io"]
    data = {"approvers.yaml": "x"}
    same = _configmap("changegate-trust", "UPDATE", data, dict(data))
    assert not calls_webhook(entry, **same)
    labels_only = copy.deepcopy(same)
    labels_only["object"]["metadata"]["labels"] = {"touched": "yes"}
    assert not calls_webhook(entry, **labels_only)
    emptied = _configmap("changegate-trust", "UPDATE", {"approvers.yaml": "x"}, {})
    del emptied["object"]["data"]
    assert calls_webhook(entry, **emptied)
    frozen = copy.deepcopy(same)
    frozen["object"]["immutable"] = True
    assert calls_webhook(entry, **frozen)
    binary = copy.deepcopy(same)
    binary["object"]["binaryData"] = {"k": "AA=="}
    assert calls_webhook(entry, **binary)


# --- clientConfig, externalURL, TLS ------------------------------------------------

def test_in_cluster_entries_call_the_webhook_service_with_the_chart_ca():
    objs = objects(DEFAULT)
    ca = one(objs, "Secret", "changegate-webhook-tls")["data"]["ca.crt"]
    for entry in one(objs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert entry["clientConfig"] == {
            "service": {"name": "changegate-webhook", "namespace": NAMESPACE,
                        "path": "/validate", "port": 443},
            "caBundle": ca,
        }
    service = one(objs, "Service", "changegate-webhook")
    assert {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"} in (
        service["spec"]["ports"])


def test_external_url_changes_only_the_client_config():
    external = CI_VALUES["externalurl-values.yaml"]["webhook"]
    values = merged(DEFAULT, {"webhook": external})
    inside = one(objects(DEFAULT), "ValidatingWebhookConfiguration")
    outside = one(objects(values), "ValidatingWebhookConfiguration")
    for entry in outside["webhooks"]:
        assert entry["clientConfig"] == {"url": external["externalURL"] + "/validate",
                                         "caBundle": external["caBundle"]}
    for vwc in (inside, outside):
        for entry in vwc["webhooks"]:
            del entry["clientConfig"]
    assert outside == inside


def test_external_url_renders_no_in_cluster_webhook():
    objs = objects(CI_VALUES["externalurl-values.yaml"])
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for absent in [("Deployment", "changegate-webhook"), ("Service", "changegate-webhook"),
                   ("Secret", "changegate-webhook-tls"), ("Job", "changegate-wait-webhook-ready"),
                   ("PodDisruptionBudget", "changegate-webhook")]:
        assert absent not in names
    assert ("Deployment", "changegate-operator") in names


def test_external_url_needs_https():
    from helm_python import HelmValuesError
    with pytest.raises(HelmValuesError, match="externalURL"):
        objects(merged(DEFAULT, {"webhook": {"externalURL": "http://127.0.0.1:8443"}}))


# --- created only after the webhook is ready ---------------------------------------

def test_install_creates_the_configuration_after_a_readiness_job():
    objs = objects(DEFAULT)
    vwc = one(objs, "ValidatingWebhookConfiguration")
    job = one(objs, "Job", "changegate-wait-webhook-ready")
    assert vwc["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        vwc["metadata"]["annotations"]["helm.sh/hook-weight"])
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f"http://changegate-webhook.{NAMESPACE}.svc:8080/readyz" in script
    # Owned by the release once an upgrade adopts it.
    assert vwc["metadata"]["annotations"]["meta.helm.sh/release-name"] == "changegate"
    assert vwc["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == NAMESPACE
    assert vwc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_upgrade_manages_the_configuration_as_a_normal_object_never_a_hook():
    objs = objects(DEFAULT, upgrade=True)
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert not any(k.startswith("helm.sh/hook") for k in vwc["metadata"]["annotations"])
    assert "changegate-wait-webhook-ready" not in _job_names(objs)


def test_register_after_ready_can_be_turned_off():
    objs = objects(merged(DEFAULT, {"webhook": {"registerAfterReady": False}}))
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert not any(k.startswith("helm.sh/hook") for k in vwc["metadata"]["annotations"])
    assert "changegate-wait-webhook-ready" not in _job_names(objs)


def _job_names(objs):
    return {o["metadata"]["name"] for o in objs if o["kind"] == "Job"}


def test_uninstall_deletes_the_configuration_before_the_webhook_goes():
    objs = objects(DEFAULT)
    job = one(objs, "Job", "changegate-uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert 'delete_validating_webhook_configuration("changegate")' in script
    role = one(objs, "ClusterRole", "changegate-uninstall")
    assert role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                              "resources": ["validatingwebhookconfigurations"],
                              "resourceNames": ["changegate"], "verbs": ["delete"]}]
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"):
        annotations = one(objs, kind, "changegate-uninstall")["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert int(one(objs, "ClusterRoleBinding", "changegate-uninstall")["metadata"][
        "annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"][
            "helm.sh/hook-weight"])
    upgraded = objects(DEFAULT, upgrade=True)
    assert one(upgraded, "Job", "changegate-uninstall")


def test_required_values_alone_are_the_default_install():
    assert DEFAULT == REQUIRED
