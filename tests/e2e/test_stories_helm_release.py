"""Story 20: a release through the real Helm v4 (tests/cluster builds v4.3.1).

Helm 4 writes each object by server-side apply as field manager "helm", so the requester
renders the chart and dry-runs it the same way: `helm template ... | changegate request -f -
--server-side --field-manager helm`. One record covers the release's two gated objects;
preflight predicts `helm upgrade`; with one signature missing the upgrade changes nothing
(atomic records); once complete the same upgrade lands whole; a rollback is one more change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .stories import Gate, Result, wait_for

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

CHART = Path(__file__).resolve().parent / "testdata" / "shop"
RELEASE = "shop"
OBJECTS = (("deployment", "shop"), ("configmap", "shop-config"))


def helm(gate: Gate, *args: str, input: str | None = None) -> Result:
    proc = gate.cluster.helm("alice", *args, input=input, timeout=180)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def release_namespace(gate: Gate, story: str) -> str:
    """A namespace where alice's team keeps its Helm release: she may also edit Secrets
    there (Helm's release records), which tests/cluster's editor role does not give."""
    ns = gate.namespace(story, tier1=False)
    gate.cluster.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "helm-releases", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["secrets"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "helm-releases", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "helm-releases"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                       "name": "alice"}]})
    return ns


def onboard(gate: Gate, ns: str) -> None:
    r = gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    assert r.rc == 0, r.err
    gate.wait_gated(ns)


def values(image: str, timeout: str) -> list[str]:
    return ["--set", f"image=registry.example/shop:{image}", "--set-string",
            f"timeoutMs={timeout}"]


def state(gate: Gate, ns: str) -> dict[str, tuple[str, str]]:
    """Each object's digest, and for the ConfigMap its resourceVersion (nothing else writes
    it, so any write shows). The Deployment's resourceVersion and generation move with the
    controller manager's status writes and the operator's bookkeeping annotation (any
    annotation change bumps a Deployment's generation): its digest is the test there."""
    out = {}
    for kind, name in OBJECTS:
        obj = gate.get(kind, name, ns)
        assert obj is not None
        written = obj["metadata"]["resourceVersion"] if kind == "configmap" else ""
        out[kind] = (gate.live_digest(kind, name, ns), written)
    return out


def approvals(gate: Gate, ns: str, record: str) -> dict[str, dict[str, Any]]:
    return {kind: gate.approval(ns, f"{record.lower()}-{kind}-{name}")["spec"]
            for kind, name in OBJECTS}


def test_a_helm_release_needs_one_record_and_lands_whole(gate: Gate):
    ns = release_namespace(gate, "s10-helm")
    install = helm(gate, "install", RELEASE, str(CHART), "-n", ns, *values("1.0.0", "2500"))
    assert install.rc == 0, install.text
    # How Helm 4 really writes: server-side apply, field manager "helm".
    live = json.loads(gate.kubectl("admin", "get", "deployment", "shop", "-n", ns, "-o", "json",
                                   "--show-managed-fields").out)
    assert [(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]
            if m["manager"] == "helm"] == [("helm", "Apply")]
    onboard(gate, ns)
    before = state(gate, ns)

    v2 = values("1.1.0", "250")
    render = helm(gate, "template", RELEASE, str(CHART), "-n", ns, *v2)
    assert render.rc == 0, render.text
    req = gate.changegate("alice", "request", "-f", "-", "--server-side", "--field-manager",
                          "helm", "-n", ns, "--record", "CHG-10101", input=render.out)
    assert req.rc == 0, req.text
    signed = approvals(gate, ns, "CHG-10101")
    assert {k: s["operation"] for k, s in signed.items()} == {"deployment": "UPDATE",
                                                               "configmap": "UPDATE"}
    assert {k: s["fromDigest"] for k, s in signed.items()} == {k: d for k, (d, _) in
                                                                before.items()}

    def preflight() -> Result:
        return gate.changegate("alice", "preflight", "-f", "-", "--server-side",
                               "--field-manager", "helm", "-n", ns, input=render.out)

    pre = preflight()
    assert pre.rc == 1 and "0 admitted, 2 denied" in pre.out, pre.text

    # Unapproved: Helm's writes are refused, and the webhook judged exactly the digests
    # request signed, byte for byte: the denial helm prints and the webhook's decision log.
    up = helm(gate, "upgrade", RELEASE, str(CHART), "-n", ns, *v2)
    assert up.rc != 0, up.text
    assert "approvals=0/2" in up.err, up.err
    to_digests = {s["toDigest"] for s in signed.values()}
    printed = set(re.findall(r"to=(sha256:[0-9a-f]{64})", up.err))
    assert printed and printed <= to_digests, up.err
    logged = wait_for(lambda: [d for kind, name in OBJECTS for d in gate.decisions(
        namespace=ns, name=name, dryRun=False, operation="UPDATE")], "helm's writes judged")
    assert {d["toDigest"] for d in logged} <= to_digests, logged
    for d in logged:
        assert d["toDigest"] == signed[d["kind"].lower()]["toDigest"], d
    assert state(gate, ns) == before

    # One signature missing (carol signs only the ConfigMap): atomic records hold the
    # whole release, the complete ConfigMap included.
    gate.approve("CHG-10101", ns, "bob")
    r = gate.changegate("carol", "approve", "chg-10101-configmap-shop-config", "-n", ns,
                        "--key", str(gate.keys["carol"]), "--yes")
    assert r.rc == 0, r.text
    assert preflight().rc == 1
    up = helm(gate, "upgrade", RELEASE, str(CHART), "-n", ns, *v2)
    assert up.rc != 0, up.text
    assert state(gate, ns) == before

    r = gate.changegate("carol", "approve", "chg-10101-deployment-shop", "-n", ns,
                        "--key", str(gate.keys["carol"]), "--yes")
    assert r.rc == 0, r.text
    pre = preflight()
    assert pre.rc == 0 and "2 admitted, 0 denied" in pre.out, pre.text
    up = helm(gate, "upgrade", RELEASE, str(CHART), "-n", ns, *v2)
    assert up.rc == 0, up.text
    after = state(gate, ns)
    assert {k: d for k, (d, _) in after.items()} == {k: s["toDigest"] for k, s in
                                                      signed.items()}
    for kind, name in OBJECTS:
        logged = gate.decision(namespace=ns, name=name, decision="allowed", reason="approved")
        assert logged["toDigest"] == signed[kind]["toDigest"]
    history = json.loads(helm(gate, "history", RELEASE, "-n", ns, "-o", "json").out)
    assert history[-1]["status"] == "deployed"

    # A rollback is a change like any other: the revision's own manifest, requested.
    old = helm(gate, "get", "manifest", RELEASE, "-n", ns, "--revision", "1")
    assert old.rc == 0, old.text
    back = helm(gate, "rollback", RELEASE, "1", "-n", ns)
    assert back.rc != 0 and "changegate" in back.err, back.text
    assert state(gate, ns) == after
    req = gate.changegate("alice", "request", "-f", "-", "--server-side", "--field-manager",
                          "helm", "-n", ns, "--record", "CHG-10102", input=old.out)
    assert req.rc == 0, req.text
    gate.approve("CHG-10102", ns)
    back = helm(gate, "rollback", RELEASE, "1", "-n", ns)
    assert back.rc == 0, back.text
    wait_for(lambda: {k: d for k, (d, _) in state(gate, ns).items()}
             == {k: d for k, (d, _) in before.items()}, "the rollback to land", timeout=10)
