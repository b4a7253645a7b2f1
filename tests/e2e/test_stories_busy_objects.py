"""Story 24: request and write apart in time, while the cluster keeps touching the object.

Pods really run (kwok nodes), so the deployment controller and kwok write status and
annotations all along; the HPA's identity scales the Deployment through deployments/scale
(autoscaled: replicas are out of the digest). None of that moves the digest the request
started from, so the approved `helm upgrade`, or the GitOps controller's sync, still lands
whole afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from changegate.core.digest import digest

from .stories import HPA_USER, POLICY_ADMINS, Gate, configmap, deployment, wait_for, write_manifest
from .test_stories_gitops import GITOPS, PATTERNS, request_to_git, sync
from .test_stories_helm_release import CHART, helm, release_namespace

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

QUIET = 5.0  # seconds of churn between request and write (the digest must not move)


def hpa(ns: str) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "shop"},
                     "minReplicas": 1, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": 80}}}]}}


def rolled_out(gate: Gate, ns: str, replicas: int, image: str) -> bool:
    d = gate.get("deployment", "shop", ns) or {}
    status = d.get("status") or {}
    spec = d.get("spec") or {}
    return (spec.get("replicas") == replicas and status.get("readyReplicas") == replicas
            and status.get("updatedReplicas") == replicas
            and spec["template"]["spec"]["containers"][0]["image"].endswith(image))


def autoscaled_digest(gate: Gate, ns: str) -> str:
    """The digest as the webhook computes it for this Deployment: an HPA targets it, so
    replicas are left out."""
    return digest(gate.get("deployment", "shop", ns), autoscaled=True)


def churn(gate: Gate, ns: str, from_digest: str, image: str) -> None:
    """The HPA scales to 3 and Pods come up; status and resourceVersion move all along;
    the digest stays where the request started."""
    before = gate.get("deployment", "shop", ns)
    assert before is not None
    r = gate.kubectl("admin", "scale", "deployment/shop", "--replicas=3", "-n", ns,
                     f"--as={HPA_USER}", "--as-group=system:masters")
    assert r.rc == 0, r.text
    wait_for(lambda: rolled_out(gate, ns, 3, image), "3 Pods running", timeout=60)
    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        assert autoscaled_digest(gate, ns) == from_digest
        time.sleep(0.5)
    after = gate.get("deployment", "shop", ns)
    assert after is not None
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert after["status"] != before.get("status")


@pytest.fixture
def busy_ns(gate: Gate, nodes: list[str]) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for ns in made:  # the Pods must be gone before the module's fake nodes are
        # Out of tier-1 first (a policy admin's write): the namespace guard refuses
        # deleting a tier-1 namespace.
        gate.kubectl("admin", "label", "namespace", ns, "tier-", "--as=pat",
                     f"--as-group={POLICY_ADMINS}")
        gate.cluster.delete_namespace(ns)


def test_helm_upgrade_lands_after_the_hpa_and_the_controllers_moved_the_object(
        gate: Gate, busy_ns: list[str]):
    ns = release_namespace(gate, "s14-helm")
    busy_ns.append(ns)
    unset = ("--set", "replicas=null")  # the HPA owns replicas
    r = helm(gate, "install", "shop", str(CHART), "-n", ns, *unset)
    assert r.rc == 0, r.text
    gate.cluster.apply(hpa(ns))
    wait_for(lambda: rolled_out(gate, ns, 1, "1.0.0"), "the first Pod running")
    gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    gate.wait_gated(ns)

    v2 = (*unset, "--set", "image=registry.example/shop:2.0.0")
    render = helm(gate, "template", "shop", str(CHART), "-n", ns, *v2)
    req = gate.changegate("alice", "request", "-f", "-", "--server-side", "--field-manager",
                          "helm", "-n", ns, "--record", "CHG-14101", input=render.out)
    assert req.rc == 0, req.text
    ca = gate.approval(ns, "chg-14101-deployment-shop")["spec"]
    churn(gate, ns, ca["fromDigest"], "1.0.0")
    gate.approve("CHG-14101", ns)
    up = helm(gate, "upgrade", "shop", str(CHART), "-n", ns, *v2)
    assert up.rc == 0, up.text
    assert autoscaled_digest(gate, ns) == ca["toDigest"]
    # The new Pods roll out, and the HPA's 3 replicas stay (Helm does not own them).
    wait_for(lambda: rolled_out(gate, ns, 3, "2.0.0"), "the new version rolled out",
             timeout=60)


def test_a_gitops_sync_lands_after_the_hpa_and_the_controllers_moved_the_object(
        gate: Gate, busy_ns: list[str], tmp_path: Path):
    mark, write_flags, request_flags = PATTERNS["argocd"]
    ns = gate.namespace("s14-argocd", tier1=False)
    busy_ns.append(ns)

    def manifest(image: str) -> Path:
        d = deployment("shop", image)
        del d["spec"]["replicas"]  # the HPA owns replicas
        return write_manifest(tmp_path / f"{image}.yaml", mark(ns, d),
                              mark(ns, configmap("shop-config", {"TIMEOUT_MS": image})))

    r = sync(gate, ns, manifest("1.0.0"), write_flags)
    assert r.rc == 0, r.text
    gate.cluster.apply(hpa(ns))
    wait_for(lambda: rolled_out(gate, ns, 1, "1.0.0"), "the first Pod running")
    gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    gate.wait_gated(ns)

    v2 = manifest("2.0.0")
    files = request_to_git(gate, ns, v2, "CHG-14201", tmp_path / "repo", request_flags)
    [dep] = [yaml.safe_load(f.read_text()) for f in files if "-deployment-" in f.name]
    churn(gate, ns, dep["spec"]["fromDigest"], "1.0.0")
    r = gate.kubectl(GITOPS, "apply", "-n", ns, "-f", str(tmp_path / "repo" / "approvals"))
    assert r.rc == 0, r.text
    r = sync(gate, ns, v2, write_flags)
    assert r.rc == 0, r.text
    assert autoscaled_digest(gate, ns) == dep["spec"]["toDigest"]
    wait_for(lambda: rolled_out(gate, ns, 3, "2.0.0"), "the new version rolled out",
             timeout=60)
