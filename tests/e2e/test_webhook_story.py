"""The webhook's own story on a real kube-apiserver (tests/cluster): `changegate serve` runs
here on 127.0.0.1, registered through the ValidatingWebhookConfiguration the Helm chart
renders with `webhook.externalURL` / `webhook.caBundle` (helm-python-sdk), its cache
listing and watching as the chart's `changegate-webhook` service account.

alice's `kubectl apply` of a new image is refused with the actionable message; she creates
a ChangeApproval with `kubectl create` that bob and carol signed (Ed25519, made here with
the core); the same `kubectl apply` then goes through, and the API server's audit log
carries the webhook's audit annotations for it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from changegate.core.compose import change_approval, manifest_for, signed
from changegate.core.digest import digest
from changegate.core.dsse import generate
from tests.chart.rendering import NAMESPACE as CONTROLLER
from tests.chart.rendering import ci_values, merged, objects, one
from tests.cluster import free_port, probe_configmap, register_webhook, unregister_webhook

CLUSTER_NAME = "e2e-webhook"
ENTRY = "deployments.changegate.io"
SUFFIX = uuid.uuid4().hex[:5]
KEYS = {name: generate("ed25519") for name in ("bob", "carol")}


def deployment(image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout", "labels": {"app": "checkout"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": {"metadata": {"labels": {"app": "checkout"}},
                                  "spec": {"containers": [{
                                      "name": "checkout",
                                      "image": f"registry.example/checkout:{image}"}]}}}}


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Webhook:
    """changegate serve + the chart's configuration on the session's cluster."""

    def __init__(self, cluster: Any, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.port, self.metrics_port = free_port(), free_port()
        self.log = work / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        approvers = [{"name": n, "namespaces": ["*"], "keys": [k.public.pem()]}
                     for n, k in KEYS.items()]
        self.values = merged(ci_values()["default-values.yaml"], {
            "policy": {"clusterName": CLUSTER_NAME},
            "trustStore": {"approvers": approvers},
            "webhook": {"externalURL": f"https://127.0.0.1:{self.port}",
                        "caBundle": base64.b64encode(cluster.ca.pair.cert_pem()).decode()}})
        self.objects = objects(self.values)
        self.vwc = one(self.objects, "ValidatingWebhookConfiguration")
        self.probe_ns = f"webhook-probe-{SUFFIX}"
        self.admitted: tuple[str, str] | None = None

    def install(self) -> None:
        c = self.cluster
        c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER}})
        c.apply(one(self.objects, "CustomResourceDefinition"))
        c.kubectl("admin", "wait", "--for=condition=Established", "--timeout=60s",
                  "crd/changeapprovals.changegate.io", check=True)
        c.apply(*[o for o in self.objects
                  if o["kind"] in ("ConfigMap", "ClusterRole", "Role")
                  and o["metadata"]["name"] != "changegate-tier1-editor"])
        # externalURL renders no webhook ServiceAccount or bindings: the in-cluster ones.
        incluster = objects(merged(self.values, {"webhook": {"externalURL": ""}}))
        c.apply(*[o for o in incluster if o["metadata"]["name"] == "changegate-webhook"
                  and o["kind"] in ("ServiceAccount", "ClusterRoleBinding", "RoleBinding")])
        config = self.work / "config.yaml"
        config.write_text(one(self.objects, "ConfigMap", "changegate-config")["data"][
            "config.yaml"])
        cert = c.webhook_cert
        argv = [sys.executable, "-m", "changegate", "serve", "--address", "127.0.0.1",
                "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                "--config", str(config), "--kubeconfig", str(self._kubeconfig())]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while _http(f"http://127.0.0.1:{self.metrics_port}/readyz") != 200:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "serve never became ready:\n" + \
                self.log.read_text()
            time.sleep(0.2)
        c.create_namespace(self.probe_ns, {"tier": "tier-1"})
        register_webhook(c, self.vwc, probe=probe_configmap(self.probe_ns),
                         webhook="configmaps.changegate.io")

    def _kubeconfig(self) -> Path:
        """The chart's webhook service account (a token), so the cache runs with exactly the
        chart's RBAC."""
        raw = self.cluster.kubectl("admin", "config", "view", "--raw", "--minify", "--flatten",
                                   "-o", "json", check=True).stdout
        server = json.loads(raw)["clusters"][0]["cluster"]
        token = self.cluster.kubectl("admin", "create", "token", "changegate-webhook", "-n",
                                     CONTROLLER, "--duration=1h", check=True).stdout.strip()
        path = self.work / "webhook.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "webhook",
            "clusters": [{"name": "e2e", "cluster": server}],
            "users": [{"name": "webhook", "user": {"token": token}}],
            "contexts": [{"name": "webhook", "context": {"cluster": "e2e", "user": "webhook"}}]}))
        path.chmod(0o600)
        return path

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                unregister_webhook(self.cluster, self.vwc, probe=probe_configmap(self.probe_ns),
                                   webhook="configmaps.changegate.io")
        finally:
            self.cluster.kubectl("admin", "delete", "validatingwebhookconfiguration",
                                 self.vwc["metadata"]["name"], "--ignore-not-found")
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(timeout=15)
            self.cluster.kubectl("admin", "delete", "namespace", self.probe_ns, "--wait=false")

    def kubectl(self, user: str, *args: str, body: Any = None) -> subprocess.CompletedProcess:
        text = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        return self.cluster.kubectl(user, *args, input=text)


@pytest.fixture(scope="module")
def hook(cluster, tmp_path_factory) -> Iterator[Webhook]:
    if not getattr(cluster, "local", False):
        pytest.skip("changegate serve listens on 127.0.0.1: needs the local control plane")
    webhook = Webhook(cluster, tmp_path_factory.mktemp("webhook-e2e"))
    try:
        webhook.install()
        yield webhook
    finally:
        webhook.close()


def tier1_namespace(hook: Webhook, story: str, *objs: dict[str, Any]) -> str:
    """alice's objects go in first, then the namespace is labelled tier-1 and we wait until
    changegate judges requests there (informers of both the API server and our cache)."""
    ns = f"{story}-{SUFFIX}"
    hook.cluster.create_namespace(ns, {})
    for obj in objs:
        done = hook.kubectl("alice", "apply", "-n", ns, "-f", "-", body=obj)
        assert done.returncode == 0, done.stderr
    hook.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    probe = json.dumps(probe_configmap(ns, "gate-probe"))
    deadline = time.monotonic() + 30
    while "changegate: would DENY" not in hook.kubectl(
            "alice", "create", "--dry-run=server", "-f", "-", body=probe).stderr:
        assert time.monotonic() < deadline, f"{ns} never gated"
        time.sleep(0.3)
    return ns


def test_an_image_change_is_denied_then_admitted_after_two_signed_approvals(hook, tmp_path):
    ns = tier1_namespace(hook, "webhook-story", deployment("1.41.0"))
    v2 = tmp_path / "v2.yaml"
    v2.write_text(yaml.safe_dump(deployment("1.42.0")))
    live = json.loads(hook.kubectl("admin", "get", "deployment", "checkout", "-n", ns,
                                   "-o", "json").stdout)

    denied = hook.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert denied.returncode == 1, denied.stdout
    assert f'admission webhook "{ENTRY}" denied the request' in denied.stderr
    assert f"changegate: UPDATE Deployment {ns}/checkout denied: no ChangeApproval" in \
        denied.stderr
    assert f"next: changegate request -f <manifest> -n {ns}" in denied.stderr
    last = denied.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"changegate: op=UPDATE from={digest(live)} to=sha256:")
    assert last.endswith(" approvals=0/2 record=none")

    # What the change will look like, from the API server itself (server-side dry-run,
    # admitted with would-DENY warnings, each under 256 characters).
    dry = hook.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-o", "json",
                       "-f", str(v2))
    assert dry.returncode == 0, dry.stderr
    warnings = [w.removeprefix("Warning: ") for w in dry.stderr.splitlines()
                if w.startswith("Warning: ")]
    assert warnings[0].startswith("changegate: would DENY: no_approval")
    assert all(len(w) < 256 for w in warnings)
    proposed = json.loads(dry.stdout)
    to_digest = digest(proposed)
    assert f"changegate: to {to_digest}" in warnings
    assert last.split(" to=")[1].startswith(to_digest)

    now = datetime.now(UTC).replace(microsecond=0)
    approval = change_approval(
        namespace=ns, name="chg-4242-checkout", cluster=CLUSTER_NAME,
        target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": live["metadata"]["uid"]},
        operation="UPDATE", from_digest=digest(live), to_digest=to_digest,
        record_id="CHG-4242", record_url="https://itsm.example/CHG-4242", requested_by="alice",
        issued_at=now - timedelta(minutes=1), expires_at=now + timedelta(hours=2),
        manifest=manifest_for(proposed), nonce=str(uuid.uuid4()))
    approval = signed(approval, KEYS["bob"], KEYS["carol"])
    created = hook.kubectl("alice", "create", "-f", "-", body=approval)
    assert created.returncode == 0, created.stderr

    # Straight away: a watch event not yet applied is covered by the bounded read-through.
    admitted = hook.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert admitted.returncode == 0, admitted.stderr
    assert "deployment.apps/checkout configured" in admitted.stdout
    after = json.loads(hook.kubectl("admin", "get", "deployment", "checkout", "-n", ns,
                                    "-o", "json").stdout)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.42.0")
    assert digest(after) == to_digest

    hook.admitted = (ns, "checkout")  # for the audit-log test below


def test_the_audit_log_records_the_webhooks_annotations_on_the_admitted_write(hook):
    if getattr(hook, "admitted", None) is None:
        pytest.skip("needs the story above")
    event = _audited_update(hook, *hook.admitted)
    # kube-apiserver keeps each key the webhook sent as "<entry name>/<key>" (SPEC §5).
    annotations = {k.removeprefix(f"{ENTRY}/"): v for k, v in event["annotations"].items()
                   if k.startswith(f"{ENTRY}/")}
    assert annotations.get("approvers") == "bob,carol", event["annotations"]
    assert annotations.get("change-record") == "CHG-4242"
    assert annotations.get("decision") == "allowed:approved"
    assert annotations.get("approval") == f"{hook.admitted[0]}/chg-4242-checkout"
    assert set(annotations) == {"decision", "approval", "approvers", "change-record", "from",
                                "to"}, event["annotations"]


def test_a_change_record_signed_by_only_one_approver_stays_denied(hook, tmp_path):
    ns = tier1_namespace(hook, "webhook-one-sig", deployment("2.0.0"))
    v2 = tmp_path / "v2.yaml"
    v2.write_text(yaml.safe_dump(deployment("2.1.0")))
    live = json.loads(hook.kubectl("admin", "get", "deployment", "checkout", "-n", ns,
                                   "-o", "json").stdout)
    proposed = json.loads(hook.kubectl("alice", "apply", "-n", ns, "--dry-run=server",
                                       "-o", "json", "-f", str(v2)).stdout)
    now = datetime.now(UTC).replace(microsecond=0)
    approval = signed(change_approval(
        namespace=ns, name="chg-77-checkout", cluster=CLUSTER_NAME,
        target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": live["metadata"]["uid"]},
        operation="UPDATE", from_digest=digest(live), to_digest=digest(proposed),
        record_id="CHG-77", record_url=None, requested_by="alice",
        issued_at=now - timedelta(minutes=1), expires_at=now + timedelta(hours=1),
        manifest=manifest_for(proposed), nonce=str(uuid.uuid4())), KEYS["bob"])
    assert hook.kubectl("alice", "create", "-f", "-", body=approval).returncode == 0
    denied = hook.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert denied.returncode == 1
    assert "reason: approvals_insufficient" in denied.stderr
    assert denied.stderr.rstrip().endswith("approvals=1/2 record=CHG-77")


def _audited_update(hook: Webhook, namespace: str, name: str) -> dict[str, Any]:
    """The audit event of the admitted (non-dry-run) update of that Deployment."""
    deadline = time.monotonic() + 15
    while True:
        events = [json.loads(line) for line in
                  hook.cluster.audit_log.read_text().splitlines() if line.strip()]
        for event in events:
            ref = event.get("objectRef") or {}
            if (ref.get("resource") == "deployments" and ref.get("namespace") == namespace
                    and ref.get("name") == name and event.get("verb") == "patch"
                    and event.get("stage") == "ResponseComplete"
                    and (event.get("responseStatus") or {}).get("code") == 200
                    and "dryRun" not in (event.get("requestURI") or "")):
                return event
        assert time.monotonic() < deadline, "no audit event for the admitted update"
        time.sleep(0.5)
