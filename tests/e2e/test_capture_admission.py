"""What the real API server sends to a validating webhook, for each case in the shared
fixtures: the same stories played with real kubectl as the users the fixtures name, recorded
by an allow-all webhook registered through a real ValidatingWebhookConfiguration.

CHANGEGATE_RECAPTURE=1 rewrites tests/fixtures/captured/*.json; otherwise the fresh
captures must have the same shape as the committed ones (a newer API server that changes what
webhooks see fails here first). `python -m tests.e2e.compare_fixtures` lists how the shared
fixtures differ from the captures.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import (
    GITOPS,
    GITOPS_USER,
    probe_configmap,
    register_webhook,
    unregister_webhook,
)

from .recorder import Recorder
from .shape import report

CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured"
NS = "payments"
ROOT_CA_PUBLISHER = "system:serviceaccount:kube-system:root-ca-cert-publisher"
BREAK_GLASS = "INC-5521 rollback: checkout 5xx at 40%"
TRACKING_ID = "payments:apps/Deployment:payments/checkout"


def deployment(image: str, replicas: int = 3, annotations: dict[str, str] | None = None):
    """The fixtures' Deployment as a team would write it (the rest is API-server defaulting)."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": NS, "labels": {"app": "checkout"},
                     **({"annotations": annotations} if annotations else {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": {
                "metadata": {"labels": {"app": "checkout"}},
                "spec": {"containers": [{
                    "name": "checkout", "image": f"registry.example/checkout:{image}",
                    "ports": [{"containerPort": 8080}],
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                }]},
            },
        },
    }


SETTINGS = {"PAYMENT_TIMEOUT_MS": "2500", "FEATURE_ONE_CLICK": "true"}


def configmap(data: dict[str, str]):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "checkout-config", "namespace": NS, "labels": {"app": "checkout"}},
            "data": data}


def recorder_vwc(url: str, ca_pem: bytes) -> dict[str, Any]:
    """The shape the chart registers: tier-1 namespaces, fail closed, dry-run safe."""
    ops = ["CREATE", "UPDATE", "DELETE"]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "changegate-e2e-recorder"},
        "webhooks": [{
            "name": "recorder.changegate.io",
            "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ops,
                 "resources": ["deployments"]},
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ops,
                 "resources": ["configmaps"]},
            ],
            "namespaceSelector": {"matchLabels": {"tier": "tier-1"}},
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }


class Story:
    """Plays kubectl commands and picks out the AdmissionReview each one caused."""

    def __init__(self, cluster, recorder: Recorder) -> None:
        self.cluster, self.recorder = cluster, recorder
        self.captured: dict[str, dict[str, Any]] = {}

    def run(self, user: str, *args: str, manifest: dict[str, Any] | None = None) -> int:
        """Run kubectl; return the index of the first review it may have caused."""
        start = len(self.recorder.reviews)
        proc = self.cluster.kubectl(
            user, *args, input=json.dumps(manifest) if manifest else None, check=True)
        assert proc.returncode == 0
        return start

    def capture(self, name: str, user: str, *args: str, manifest=None) -> dict[str, Any]:
        start = self.run(user, *args, manifest=manifest)
        username = GITOPS_USER if user == GITOPS else user
        # The API server calls the webhook before it answers, so the review is already here.
        mine = [r for r in self.recorder.reviews[start:]
                if r["request"]["userInfo"]["username"] == username]
        assert len(mine) == 1, f"{name}: expected one review from {username}, got {len(mine)}"
        self.captured[name] = mine[0]
        return mine[0]

    def reset(self) -> None:
        """Back to the fixtures' starting point: alice's 1.41.0, three replicas, rolled out."""
        self.run("alice", "apply", "-f", "-", manifest=deployment("1.41.0"))
        self.settle()

    def settle(self) -> None:
        """Wait until the deployment controller has caught up (revision annotation written,
        status observed), so the next request's oldObject looks like a steady cluster's."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            proc = self.cluster.kubectl("admin", "get", "deployment", "checkout", "-n", NS,
                                        "-o", "json", check=True)
            d = json.loads(proc.stdout)
            if d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"]:
                return
            time.sleep(0.2)
        raise TimeoutError("deployment controller did not observe checkout")


@pytest.fixture(scope="module")
def recorder(cluster):
    if not cluster.local:
        pytest.skip("the recorder listens on 127.0.0.1: needs the local control plane")
    cluster.create_namespace(NS, {"tier": "tier-1"})
    probe = probe_configmap(NS)
    with Recorder(str(cluster.webhook_cert.cert), str(cluster.webhook_cert.key)) as rec:
        vwc = recorder_vwc(rec.url(), cluster.ca.pair.cert_pem())
        register_webhook(cluster, vwc, probe=probe)
        try:
            yield rec
        finally:
            unregister_webhook(cluster, vwc, probe=probe)


@pytest.fixture(scope="module")
def captured(cluster, recorder) -> dict[str, dict[str, Any]]:
    """Each fixture's story, starting from the state its oldObject shows (uncaptured set-up
    steps in between), so that what differs from the fixture is the API server's doing."""
    s = Story(cluster, recorder)
    apply = ("apply", "-f", "-")  # client-side apply: leaves the last-applied annotation

    s.capture("configmap-create", "alice", *apply, manifest=configmap({"A": "1"}))
    s.run("alice", *apply, manifest=configmap(SETTINGS))
    s.capture("configmap-update", "alice", *apply,
              manifest=configmap({**SETTINGS, "PAYMENT_TIMEOUT_MS": "250"}))
    s.run("alice", *apply, manifest=configmap(SETTINGS))
    s.capture("configmap-delete", "alice", "delete", "configmap", "checkout-config", "-n", NS)

    s.capture("deployment-create", "alice", *apply, manifest=deployment("1.41.0"))
    s.settle()
    s.capture("deployment-update-dryrun", "alice", *apply, "--dry-run=server",
              manifest=deployment("1.42.0"))
    s.capture("deployment-update", "alice", *apply, manifest=deployment("1.42.0"))
    s.reset()
    s.capture("deployment-update-by-gitops", GITOPS, *apply, manifest=deployment("1.42.0"))
    s.reset()
    s.capture("deployment-update-replicas", "alice", *apply,
              manifest=deployment("1.41.0", replicas=0))
    s.reset()
    s.capture("deployment-break-glass", "dana", *apply, manifest=deployment(
        "1.40.3", annotations={"changegate.io/break-glass": BREAK_GLASS}))
    s.reset()  # alice's apply drops dana's annotation: it is in dana's last-applied
    # Argo CD adding its tracking annotation: an ignored annotation, no spec change.
    s.capture("deployment-update-metadata-only", GITOPS, *apply, manifest=deployment(
        "1.41.0", annotations={"argocd.argoproj.io/tracking-id": TRACKING_ID}))
    s.reset()
    s.capture("deployment-rollout-restart", "alice", "rollout", "restart",
              "deployment/checkout", "-n", NS)
    s.settle()
    # Nobody's apply owns restartedAt; take it out so the DELETE sees the plain Deployment.
    s.run("admin", "patch", "deployment", "checkout", "-n", NS, "--type=json",
          "-p", '[{"op": "remove", "path": "/spec/template/metadata/annotations"}]')
    s.settle()
    s.capture("deployment-delete", "alice", "delete", "deployment", "checkout", "-n", NS)

    # Not a fixture: a tier-1 namespace created while the webhook is registered gets the
    # root CA ConfigMap from kube-controller-manager (SPEC §5 exemptWriters).
    start = len(recorder.reviews)
    cluster.create_namespace(f"{NS}-new", {"tier": "tier-1"})
    deadline = time.monotonic() + 30
    while not [r for r in recorder.reviews[start:]
               if r["request"]["userInfo"]["username"] == ROOT_CA_PUBLISHER]:
        assert time.monotonic() < deadline, "no kube-root-ca.crt CREATE seen"
        time.sleep(0.2)
    s.captured["extra-configmap-create-kube-root-ca"] = next(
        r for r in recorder.reviews[start:]
        if r["request"]["userInfo"]["username"] == ROOT_CA_PUBLISHER)

    if os.environ.get("CHANGEGATE_RECAPTURE"):
        CAPTURED.mkdir(parents=True, exist_ok=True)
        for name, review in s.captured.items():
            (CAPTURED / f"{name}.json").write_text(json.dumps(review, indent=2) + "\n")
    return s.captured


EXPECTED = {  # name: (username, operation, dryRun)
    "configmap-create": ("alice", "CREATE", False),
    "configmap-update": ("alice", "UPDATE", False),
    "configmap-delete": ("alice", "DELETE", False),
    "deployment-create": ("alice", "CREATE", False),
    "deployment-update-dryrun": ("alice", "UPDATE", True),
    "deployment-update": ("alice", "UPDATE", False),
    "deployment-update-by-gitops": (GITOPS_USER, "UPDATE", False),
    "deployment-update-metadata-only": (GITOPS_USER, "UPDATE", False),
    "deployment-rollout-restart": ("alice", "UPDATE", False),
    "deployment-update-replicas": ("alice", "UPDATE", False),
    "deployment-break-glass": ("dana", "UPDATE", False),
    "deployment-delete": ("alice", "DELETE", False),
    "extra-configmap-create-kube-root-ca": (ROOT_CA_PUBLISHER, "CREATE", False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_api_server_sent_the_expected_request(captured, name):
    req = captured[name]["request"]
    assert (req["userInfo"]["username"], req["operation"], req["dryRun"]) == EXPECTED[name]
    assert (req["object"] is None) == (req["operation"] == "DELETE")
    assert (req["oldObject"] is None) == (req["operation"] == "CREATE")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_request_has_the_shape_of_the_committed_capture(captured, name):
    committed = json.loads((CAPTURED / f"{name}.json").read_text())
    shape = [line for line in report(committed, captured[name]) if line.startswith("shape")]
    assert shape == [], "\n".join(shape)


def test_only_people_gitops_and_the_root_ca_publisher_called_the_webhook(captured, recorder):
    # The deployment controller writes deployment.kubernetes.io/revision through the status
    # subresource (managedFields: manager kube-controller-manager, subresource status), so a
    # webhook on `deployments` never sees the controllers of a rollout.
    callers = {r["request"]["userInfo"]["username"] for r in recorder.reviews}
    assert callers == {"admin", "alice", "dana", GITOPS_USER, ROOT_CA_PUBLISHER}
