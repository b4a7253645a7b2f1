"""Least-privilege RBAC for the chart's components and the role it offers users."""

from __future__ import annotations

import pytest

from .rendering import CI_VALUES_NAMES, NAMESPACE, ci_values, merged, objects, one

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]
READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete", "deletecollection"}


def grants(role):
    """{(apiGroup, resource): verbs} of a Role or ClusterRole (resourceNames ignored)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def writes(role):
    return {key for key, verbs in grants(role).items() if verbs & WRITE}


@pytest.mark.parametrize("name", CI_VALUES_NAMES)
def test_no_role_uses_wildcards_or_privilege_verbs(name):
    for role in (o for o in objects(CI_VALUES[name]) if o["kind"] in {"Role", "ClusterRole"}):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], field)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "nonResourceURLs" not in rule


def test_webhook_only_reads():
    objs = objects(DEFAULT)
    cluster = grants(one(objs, "ClusterRole", "changegate-webhook"))
    assert cluster == {
        ("changegate.io", "changeapprovals"): READ,
        ("", "namespaces"): READ,
        ("autoscaling", "horizontalpodautoscalers"): READ,
    }
    assert grants(one(objs, "Role", "changegate-webhook")) == {("", "configmaps"): READ}


def test_operator_writes_only_what_it_records():
    objs = objects(DEFAULT)
    cluster = one(objs, "ClusterRole", "changegate-operator")
    assert writes(cluster) == {
        ("changegate.io", "changeapprovals"), ("changegate.io", "changeapprovals/status"),
        ("apps", "deployments"), ("", "configmaps"), ("", "events"), ("events.k8s.io", "events"),
    }
    g = grants(cluster)
    assert g[("", "configmaps")] == READ | {"patch"}  # its annotation only
    assert g[("", "events")] == {"create", "patch"}
    assert g[("admissionregistration.k8s.io", "validatingwebhookconfigurations")] == READ
    assert not any(resource == "secrets" for _, resource in g)


def test_operator_gets_every_permission_the_operator_code_says_it_needs():
    """changegate.operator lists its RBAC as data; peering is not used (--standalone)."""
    needs = pytest.importorskip("changegate.operator")
    objs = objects(DEFAULT)
    for role, rules in ((one(objs, "ClusterRole", "changegate-operator"), needs.CLUSTER_RULES),
                        (one(objs, "Role", "changegate-operator"), needs.NAMESPACE_RULES)):
        granted = grants(role)
        for rule in rules:
            if rule["apiGroups"] == ["kopf.dev"]:
                continue
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    missing = set(rule["verbs"]) - granted.get((group, resource), set())
                    assert not missing, (role["kind"], group, resource, missing)


def test_operator_without_canaries_cannot_create_deployments():
    cluster = one(objects(merged(DEFAULT, {"operator": {"canary": False}})),
                  "ClusterRole", "changegate-operator")
    g = grants(cluster)
    assert g[("apps", "deployments")] == READ | {"patch"}
    assert ("", "pods") not in g


def test_operator_ledger_writes_are_limited_to_the_sixteen_ledger_configmaps():
    role = one(objects(DEFAULT), "Role", "changegate-operator")
    by_verbs = {tuple(r["verbs"]): r for r in role["rules"]}
    assert by_verbs[("create",)].get("resourceNames") is None  # RBAC cannot name a create
    named = by_verbs[("update", "patch")]
    assert named["resourceNames"] == [f"changegate-{what}-{i:x}" for what in ("ledger", "record")
                                      for i in range(16)]


def test_only_the_operator_may_write_change_approval_status():
    for role in (o for o in objects(DEFAULT) if o["kind"] in {"Role", "ClusterRole"}):
        if ("changegate.io", "changeapprovals/status") in writes(role):
            assert role["metadata"]["name"] == "changegate-operator"


def test_bindings_give_each_service_account_its_own_role():
    objs = objects(DEFAULT)
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in (o for o in objs if o["kind"] == kind):
            name = binding["metadata"]["name"]
            if name == "changegate-info-reader":
                continue
            assert binding["roleRef"]["name"] == name
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
            one(objs, binding["roleRef"]["kind"], name)
            one(objs, "ServiceAccount", name)


def test_every_authenticated_user_may_read_changegate_info_and_nothing_else():
    objs = objects(DEFAULT)
    role = one(objs, "Role", "changegate-info-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["changegate-info"], "verbs": ["get"]}]
    binding = one(objs, "RoleBinding", "changegate-info-reader")
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": "system:authenticated"}]
    info = one(objs, "ConfigMap", "changegate-info")["data"]
    assert info == {"clusterName": "prod-eu-1", "requiredApprovals": "2",
                    "maxApprovalLifetime": "24h", "version": "0.1.0",
                    # the digest rules, so requesters compute the webhook's digest
                    "ignoredAnnotations": "", "ignoredLabels": "",
                    # SPEC §6a and §10: request asks for --assisted; audit's overdue reviews
                    "requireAssistanceDeclaration": "false", "reviewDeadline": "24h"}


# --- changegate-tier1-editor (SPEC §11) --------------------------------------------

def test_tier1_editor_writes_only_gated_kinds_and_approvals():
    role = one(objects(DEFAULT), "ClusterRole", "changegate-tier1-editor")
    assert writes(role) == {("apps", "deployments"), ("", "configmaps"),
                            ("changegate.io", "changeapprovals"), ("apps", "deployments/scale")}


def test_tier1_editor_cannot_change_what_runs_any_other_way():
    g = grants(one(objects(DEFAULT), "ClusterRole", "changegate-tier1-editor"))
    never_written = [("", "pods"), ("apps", "replicasets"), ("", "secrets"), ("", "services"),
                     ("networking.k8s.io", "ingresses"),
                     ("autoscaling", "horizontalpodautoscalers"),
                     ("policy", "poddisruptionbudgets"), ("apps", "statefulsets"),
                     ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs")]
    for key in never_written:
        assert not g.get(key, set()) & WRITE, key
    for _, resource in g:
        assert resource not in {"secrets", "pods/exec", "pods/attach", "pods/portforward",
                                "pods/ephemeralcontainers", "serviceaccounts/token",
                                "changeapprovals/status"}
    assert g[("", "pods")] == READ  # read elsewhere
    assert g[("apps", "replicasets")] == READ


def test_tier1_editor_role_can_be_left_out():
    objs = objects(CI_VALUES["monitoring-off-values.yaml"])
    assert "changegate-tier1-editor" not in {o["metadata"]["name"] for o in objs}
