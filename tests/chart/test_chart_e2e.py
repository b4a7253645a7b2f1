"""The chart on a real kube-apiserver 1.37 (tests/cluster): it applies, the API server
compiles its CEL, and each webhook entry is called exactly for the requests it should see.

The chart is rendered with webhook.externalURL pointing at a recorder on 127.0.0.1 that
allows everything and keeps every AdmissionReview (tests/e2e/recorder.py), so what is
tested is the configuration's matching (rules, selectors, matchConditions), not the
webhook's verdicts (tests/e2e does those).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster import Cluster, GoMissing, ensure_binaries, probe_configmap, register_webhook
from tests.e2e.recorder import Recorder
from tests.integration import tlsutil

from .rendering import NAMESPACE, REPO, ci_values, merged, objects, one

pytestmark = pytest.mark.e2e

HPA = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"


class Live:
    def __init__(self, cluster: Cluster, recorder: Recorder) -> None:
        self.cluster, self.recorder = cluster, recorder

    def kubectl(self, *args: str, user: str = "admin", body: Any = None, check: bool = True):
        text = None if body is None else json.dumps(body)
        proc = self.cluster.kubectl(user, *args, input=text)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def calls(self, entry_resource: str, action, *, sub: str = "", namespace: str | None = None):
        """How many reviews for this resource (and subresource) `action()` caused."""
        def count():
            return sum(1 for r in self.recorder.reviews
                       if r["request"]["resource"]["resource"] == entry_resource
                       and r["request"].get("subResource", "") == sub
                       and (namespace is None or r["request"].get("namespace") == namespace))
        before = count()
        action()
        return count() - before

    def can(self, user: str, *args: str) -> bool:
        proc = self.kubectl("auth", "can-i", *args, user=user, check=False)
        return proc.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    try:
        ensure_binaries()
    except GoMissing:
        pytest.skip("e2e: install Go >= 1.26 (tests/cluster/build.sh builds the control plane)")
    tmp = tmp_path_factory.mktemp("chart-e2e")
    ca = tlsutil.TestCA.create()
    cert, key, _ = ca.issue(tmp / "tls")
    with Recorder(str(cert), str(key)) as recorder, Cluster() as cluster:
        values = merged(ci_values()["default-values.yaml"], {"webhook": {
            "externalURL": f"https://127.0.0.1:{recorder.port}",
            "caBundle": base64.b64encode(ca.pem).decode()}})
        objs = objects(values)
        vwc = one(objs, "ValidatingWebhookConfiguration")
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        cluster.apply(one(objs, "CustomResourceDefinition"))
        cluster.kubectl("admin", "wait", "--for=condition=Established", "--timeout=60s",
                        "crd/changeapprovals.changegate.io", check=True)
        cluster.apply(*[o for o in objs if o["kind"] not in {
            "CustomResourceDefinition", "ValidatingWebhookConfiguration"}])
        cluster.create_namespace("payments", {"tier": "tier-1"})
        cluster.create_namespace("sandbox", {"tier": "tier-2"})
        register_webhook(cluster, vwc, probe=probe_configmap("payments"),
                         webhook="configmaps.changegate.io")
        yield Live(cluster, recorder)


def _deployment(name: str, namespace: str, replicas: int = 3) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "app", "image": "registry.example/app:1.0"}]}}}}


def test_the_api_server_accepts_every_entry_and_its_cel(live):
    got = json.loads(live.kubectl("get", "validatingwebhookconfiguration", "changegate",
                                  "-o", "json").stdout)
    names = {w["name"] for w in got["webhooks"]}
    assert names == {w["name"] for w in one(objects(ci_values()["default-values.yaml"]),
                                               "ValidatingWebhookConfiguration")["webhooks"]}
    assert {w["failurePolicy"] for w in got["webhooks"]} == {"Fail"}


def test_gated_kinds_are_sent_only_from_tier_1_namespaces_and_never_status(live):
    assert live.calls("deployments", lambda: live.kubectl(
        "create", "-f", "-", body=_deployment("checkout", "payments"))) == 1
    assert live.calls("deployments", lambda: live.kubectl(
        "create", "-f", "-", body=_deployment("checkout", "sandbox"))) == 0
    assert live.calls("deployments", lambda: live.kubectl(
        "-n", "payments", "patch", "deployment", "checkout", "--subresource=status",
        "--type=merge", "-p", '{"status":{"observedGeneration":7}}'), sub="status") == 0
    assert live.calls("configmaps", lambda: live.kubectl(
        "-n", "payments", "create", "configmap", "settings", "--from-literal=a=1"),
        namespace="payments") == 1
    assert live.calls("configmaps", lambda: live.kubectl(
        "-n", "kube-system", "create", "configmap", "settings", "--from-literal=a=1")) == 0


def test_scale_guard_sees_only_scale_downs_by_people(live):
    live.kubectl("create", "-f", "-", body=_deployment("api", "payments", 3))

    def scale(n, user="admin", *extra):
        return lambda: live.kubectl("-n", "payments", "scale", "deployment/api",
                                    f"--replicas={n}", *extra, user=user)

    assert live.calls("deployments", scale(5), sub="scale") == 0           # up
    assert live.calls("deployments", scale(2), sub="scale") == 1           # down
    assert live.calls("deployments", scale(0), sub="scale") == 1           # to zero
    assert live.calls("deployments", scale(4), sub="scale") == 0           # up from zero
    # The autoscaler's username (system:masters only so kubectl may read the Deployment first).
    hpa = (f"--as={HPA}", "--as-group=system:masters")
    assert live.calls("deployments", scale(1, "admin", *hpa), sub="scale") == 0


def test_namespace_guard_sees_only_namespaces_that_were_tier_1(live):
    def label(namespace, value):
        return lambda: live.kubectl("label", "namespace", namespace, f"touched={value}",
                                    "--overwrite")

    assert live.calls("namespaces", label("payments", "1")) == 1
    assert live.calls("namespaces", label("sandbox", "1")) == 0
    assert live.calls("namespaces", label(NAMESPACE, "1")) == 0


def test_config_guard_sees_real_changes_to_trust_policy_and_ledger_only(live):
    def patch(name, patch_body):
        return lambda: live.kubectl("-n", NAMESPACE, "patch", "configmap", name,
                                    "--type=merge", "-p", json.dumps(patch_body))

    trust = one(objects(ci_values()["default-values.yaml"]), "ConfigMap", "changegate-trust")
    same = {"data": trust["data"], "metadata": {"labels": {"touched": "yes"}}}
    assert live.calls("configmaps", patch("changegate-trust", same), namespace=NAMESPACE) == 0
    changed = {"data": {"approvers.yaml": "approvers: []\n# edited\n"}}
    assert live.calls("configmaps", patch("changegate-trust", changed), namespace=NAMESPACE) == 1
    assert live.calls("configmaps", patch("changegate-info", {"data": {"x": "1"}}),
                      namespace=NAMESPACE) == 0
    ledger = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "changegate-ledger-a", "namespace": NAMESPACE}}
    assert live.calls("configmaps", lambda: live.kubectl("create", "-f", "-", body=ledger),
                      namespace=NAMESPACE) == 1
    assert live.calls("configmaps", lambda: live.kubectl(
        "-n", NAMESPACE, "delete", "configmap", "changegate-ledger-a"), namespace=NAMESPACE) == 1


def test_change_approvals_are_sent_from_every_namespace_but_ours_and_kube_system(live):
    example = yaml.safe_load((REPO / "examples" / "changeapproval-configmap-create.yaml")
                             .read_text())

    def create(namespace):
        approval = copy.deepcopy(example)
        approval["metadata"]["namespace"] = namespace
        return lambda: live.kubectl("create", "--dry-run=server", "-f", "-", body=approval)

    assert live.calls("changeapprovals", create("sandbox")) == 1
    assert live.calls("changeapprovals", create("payments")) == 1
    assert live.calls("changeapprovals", create(NAMESPACE)) == 0
    assert live.calls("changeapprovals", create("kube-system")) == 0


def test_rbac_as_the_api_server_sees_it(live):
    # `kubectl auth can-i VERB RESOURCE/NAME`; subresources need --subresource.
    def alice(*args):
        return live.can("alice", *args, "-n", "payments")

    assert alice("update", "deployments")
    assert alice("update", "deployments", "--subresource=scale")
    assert alice("create", "changeapprovals.changegate.io")
    assert alice("get", "pods")
    for args in [("create", "pods"), ("get", "secrets"), ("list", "secrets"),
                 ("create", "pods", "--subresource=exec"),
                 ("create", "pods", "--subresource=portforward"),
                 ("update", "pods", "--subresource=ephemeralcontainers"),
                 ("update", "replicasets.apps"), ("patch", "services"),
                 ("create", "horizontalpodautoscalers.autoscaling"),
                 ("update", "changeapprovals.changegate.io", "--subresource=status"),
                 ("impersonate", "users")]:
        assert not alice(*args), args
    webhook = f"--as=system:serviceaccount:{NAMESPACE}:changegate-webhook"
    operator = f"--as=system:serviceaccount:{NAMESPACE}:changegate-operator"
    status = ("changeapprovals.changegate.io", "--subresource=status", "-A")
    assert live.can("admin", "list", "changeapprovals.changegate.io", "-A", webhook)
    assert not live.can("admin", "create", "changeapprovals.changegate.io", "-A", webhook)
    assert not live.can("admin", "update", *status, webhook)
    assert live.can("admin", "update", *status, operator)
    assert live.can("admin", "patch", "configmaps/changegate-ledger-3", "-n", NAMESPACE,
                    operator)
    # RBAC cannot subtract: the operator's cluster-wide ConfigMap patch (for its annotation)
    # reaches changegate-trust too. The config guard is what refuses it (operator is no
    # policy admin): test_config_guard_sees_real_changes_to_trust_policy_and_ledger_only.
    assert not live.can("admin", "update", "configmaps/changegate-trust", "-n", NAMESPACE,
                        operator)
    assert not live.can("admin", "delete", "configmaps/changegate-trust", "-n", NAMESPACE,
                        operator)
    # Any authenticated user reads changegate-info, and only that.
    assert live.can("bob", "get", "configmaps/changegate-info", "-n", NAMESPACE)
    assert not live.can("bob", "get", "configmaps/changegate-policy", "-n", NAMESPACE)
