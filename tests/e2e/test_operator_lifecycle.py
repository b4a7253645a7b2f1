"""`changegate operator` against the real API server, as its own service account holding
exactly the RBAC changegate.operator says it needs: Pending -> Approved (signatures
appended by the approvers themselves) -> Applied (the Deployment reaches toDigest), the
nonce in the ledger, the annotation on the Deployment, the story in Events. The webhook
does not run here; the operator never needs it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from changegate.core.compose import change_approval, manifest_for, statement_bytes
from changegate.core.digest import digest
from changegate.core.dsse import sign_envelope
from changegate.core.statement import parse_statement
from changegate.operator import CLUSTER_RULES, NAMESPACE_RULES
from tests.cluster import free_port
from tests.support import key, trust_yaml

REPO = Path(__file__).resolve().parents[2]
SUFFIX = uuid.uuid4().hex[:6]
CONTROLLER = f"changegate-op-{SUFFIX}"
NS = f"op-e2e-{SUFFIX}"
SA = "changegate-operator"
OPERATOR_USER = f"system:serviceaccount:{CONTROLLER}:{SA}"
NAME = "chg-4242"


def deployment(image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout", "namespace": NS, "labels": {"app": "checkout"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": {"metadata": {"labels": {"app": "checkout"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def rbac() -> list[dict[str, Any]]:
    """The operator's service account with CLUSTER_RULES / NAMESPACE_RULES and nothing else
    (no peering: the operator runs --standalone here)."""
    name = f"changegate-operator-{SUFFIX}"
    subject = [{"kind": "ServiceAccount", "name": SA, "namespace": CONTROLLER}]
    rules = [r for r in CLUSTER_RULES if r["apiGroups"] != ["kopf.dev"]]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SA, "namespace": CONTROLLER}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name}, "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": name}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": SA, "namespace": CONTROLLER}, "rules": list(NAMESPACE_RULES)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": SA, "namespace": CONTROLLER}, "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA}},
    ]


def operator_kubeconfig(cluster, path: Path) -> Path:
    """The admin kubeconfig's server and CA, with a token of the operator's account."""
    raw = cluster.kubectl("admin", "config", "view", "--raw", "--minify", "--flatten",
                          "-o", "json", check=True).stdout
    server = json.loads(raw)["clusters"][0]["cluster"]
    token = cluster.kubectl("admin", "create", "token", SA, "-n", CONTROLLER,
                            "--duration=2h", check=True).stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": SA, "context": {"cluster": "e2e", "user": SA}}],
        "current-context": SA}))
    path.chmod(0o600)
    return path


def get_json(cluster, *args: str) -> dict[str, Any]:
    proc = cluster.kubectl("admin", "get", *args, "-o", "json")
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def wait_for(probe: Callable[[], Any], what: str, log: Path, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; last saw {last!r}\n"
                         f"--- operator log ---\n{tail}")


@pytest.fixture(scope="module")
def setup(cluster, tmp_path_factory) -> Iterator[dict[str, Any]]:
    crd = yaml.safe_load((REPO / "crds" / "changeapprovals.changegate.io.yaml").read_text())
    cluster.apply(crd)
    cluster.kubectl("admin", "wait", "--for=condition=established", "--timeout=60s",
                    "crd/changeapprovals.changegate.io", check=True)
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": CONTROLLER}})
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "changegate-trust", "namespace": CONTROLLER},
         "data": {"approvers.yaml": trust_yaml([
             {"name": name, "namespaces": [NS], "keys": [key(name).public.pem()]}
             for name in ("bob", "carol", "dave")])}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "changegate-policy", "namespace": CONTROLLER},
         "data": {"policy.yaml": "tierSelector: {tier: tier-1}\n"}},
        *rbac())
    cluster.create_namespace(NS, {"tier": "tier-1"})
    work = tmp_path_factory.mktemp("operator")
    kubeconfig = operator_kubeconfig(cluster, work / "operator.kubeconfig")
    port, log = free_port(), work / "operator.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "changegate", "operator", "--kubeconfig", str(kubeconfig),
             "--namespace", CONTROLLER, "--standalone", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _get(port, "/healthz") == "ok\n",
                 "the operator's /healthz", log, timeout=60)
        assert proc.poll() is None, log.read_text()
        yield {"port": port, "log": log, "proc": proc, "kubeconfig": kubeconfig}
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
        for kind, name in (("namespace", NS), ("namespace", CONTROLLER),
                           ("clusterrole", f"changegate-operator-{SUFFIX}"),
                           ("clusterrolebinding", f"changegate-operator-{SUFFIX}")):
            cluster.kubectl("admin", "delete", kind, name, "--wait=false",
                            "--ignore-not-found")


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def kubectl_apply(cluster, doc: dict[str, Any], path: Path, *flags: str) -> str:
    path.write_text(yaml.safe_dump(doc))
    return cluster.kubectl("admin", "apply", "-f", str(path), *flags, check=True).stdout


def test_pending_then_approved_then_applied_with_the_use_recorded(cluster, setup, tmp_path):
    log = setup["log"]
    kubectl_apply(cluster, deployment("registry.example/checkout:1.0"), tmp_path / "v1.yaml")
    live = get_json(cluster, "deployment", "checkout", "-n", NS)
    v2 = deployment("registry.example/checkout:2.0")
    # What the API server will store for this apply: the digest the approval signs.
    dry = json.loads(kubectl_apply(cluster, v2, tmp_path / "v2.yaml", "--dry-run=server",
                                   "-o", "json"))
    now = datetime.now(UTC)
    approval = change_approval(
        namespace=NS, name=NAME, cluster="",
        target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": live["metadata"]["uid"]},
        operation="UPDATE", from_digest=digest(live), to_digest=digest(dry),
        record_id="CHG-4242", record_url=None, requested_by="alice",
        issued_at=now - timedelta(minutes=1), expires_at=now + timedelta(hours=1),
        manifest=manifest_for(dry), nonce=str(uuid.uuid4()))
    nonce = parse_statement(statement_bytes(approval)).predicate.nonce
    cluster.kubectl("admin", "create", "-f", "-", input=json.dumps(approval), check=True)

    def ca() -> dict[str, Any]:
        return get_json(cluster, "changeapprovals", NAME, "-n", NS)

    def phase() -> str:
        return str((ca().get("status") or {}).get("phase") or "")

    wait_for(lambda: phase() == "Pending", "Pending", log)
    status = ca()["status"]
    assert (status["approvals"], status["required"]) == (0, 2)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert "needs 2 more from: bob, carol, dave" in conditions["Approved"]["message"]

    # The approvers append their own signatures (the CRD lets signatures only grow).
    for approver in ("bob", "carol"):
        signature = sign_envelope(key(approver), statement_bytes(approval))
        user = approver if approver in cluster.kubeconfigs else "admin"
        cluster.kubectl(user, "patch", "changeapproval", NAME, "-n", NS, "--type=json",
                        "-p", json.dumps([{"op": "add", "path": "/spec/signatures/-",
                                           "value": signature}]), check=True)
    wait_for(lambda: phase() == "Approved", "Approved", log)
    assert ca()["status"]["approvers"] == ["bob", "carol"]

    kubectl_apply(cluster, v2, tmp_path / "v2.yaml")
    wait_for(lambda: phase() == "Applied", "Applied", log)

    ledger = get_json(cluster, "configmap", f"changegate-ledger-{nonce[0]}", "-n", CONTROLLER)
    record = json.loads(ledger["data"][nonce])
    assert record == {"approval": f"{NS}/{NAME}", "uid": ca()["metadata"]["uid"],
                      "target": f"k8s://apps/v1/namespaces/{NS}/deployments/checkout",
                      "expiresAt": approval["spec"]["expiresAt"]}
    target = wait_for(lambda: (d := get_json(cluster, "deployment", "checkout", "-n", NS))
                      ["metadata"].get("annotations", {}).get("changegate.io/approval") and d,
                      "the annotation on the Deployment", log)
    annotations = target["metadata"]["annotations"]
    assert annotations["changegate.io/approval"] == f"CHG-4242 {NS}/{NAME} approved-by=bob,carol"
    # Nothing of kopf's on the object it watched; the annotation changed no digest.
    assert set(annotations) <= {"changegate.io/approval", "deployment.kubernetes.io/revision",
                                "kubectl.kubernetes.io/last-applied-configuration"}
    assert not target["metadata"].get("finalizers")
    assert digest(target) == approval["spec"]["toDigest"]
    # Once Applied nothing can change it: kopf released its finalizer on the approval.
    wait_for(lambda: not ca()["metadata"].get("finalizers"), "the finalizer released", log)

    events = get_json(cluster, "events", "-n", NS, "--field-selector",
                      f"involvedObject.name={NAME}")["items"]
    reasons = {e["reason"] for e in events}
    assert {"Pending", "Approved", "Applied"} <= reasons, reasons
    assert all(e["source"].get("component") == "changegate-operator" or
               e.get("reportingComponent") == "changegate-operator" for e in events)
    metrics = _get(setup["port"], "/metrics")
    assert 'changegate_changeapprovals{phase="Applied"} 1.0' in metrics


def test_the_operator_ran_as_its_own_service_account(cluster, setup):
    """So the test above proves the RBAC list, not admin rights."""
    proc = subprocess.run([cluster.kubectl_bin, "--kubeconfig", str(setup["kubeconfig"]),
                           "auth", "whoami", "-o", "json"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(proc.stdout)["status"]["userInfo"]["username"] == OPERATOR_USER
    review = cluster.kubectl("admin", "auth", "can-i", "create", "secrets", "-n", NS,
                             f"--as={OPERATOR_USER}")
    assert review.stdout.strip() == "no"
