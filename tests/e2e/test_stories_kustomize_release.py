"""Story 21: a kustomize release with a hashed ConfigMap. A config change renames the
ConfigMap (configMapGenerator appends a hash of its data), so one release is three changes:
the new ConfigMap's CREATE, the Deployment's UPDATE that points at it, and the old
ConfigMap's DELETE by `kubectl apply --prune`. One request, one review, one record; it
lands whole. Rendered by kubectl's built-in kustomize, as a team's pipeline does.
"""

from __future__ import annotations

import json
from pathlib import Path

from .stories import Gate

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

SELECTOR = "app=shop"
DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: shop
          image: registry.example/shop:1.0.0
          envFrom:
            - configMapRef: {name: shop-config}
"""


def render(gate: Gate, base: Path, timeout_ms: str) -> Path:
    """`kubectl kustomize` of a kustomization whose generated ConfigMap holds timeout_ms."""
    src = base / f"src-{timeout_ms}"
    src.mkdir()
    (src / "deployment.yaml").write_text(DEPLOYMENT)
    (src / "kustomization.yaml").write_text(
        "resources: [deployment.yaml]\n"
        "labels:\n  - pairs: {app: shop}\n"
        "configMapGenerator:\n  - name: shop-config\n"
        f"    literals: [TIMEOUT_MS={timeout_ms}]\n")
    r = gate.kubectl("alice", "kustomize", str(src))
    assert r.rc == 0, r.err
    out = base / f"release-{timeout_ms}.yaml"
    out.write_text(r.out)
    return out


def configmaps(gate: Gate, ns: str) -> list[str]:
    r = gate.kubectl("admin", "get", "configmaps", "-n", ns, "-l", SELECTOR, "-o", "json")
    return sorted(i["metadata"]["name"] for i in json.loads(r.out)["items"])


def test_a_hashed_configmap_release_is_one_record_and_lands_whole(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s11-kustomize", tier1=False)
    v1, v2 = render(gate, tmp_path, "2500"), render(gate, tmp_path, "250")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v1))
    assert r.rc == 0, r.err
    r = gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    assert r.rc == 0, r.err
    gate.wait_gated(ns)
    [old] = configmaps(gate, ns)
    assert old.startswith("shop-config-")

    req = gate.changegate("alice", "request", "-f", str(v2), "--prune", "-l", SELECTOR, "-n",
                          ns, "--record", "CHG-11101")
    assert req.rc == 0, req.text
    listed = json.loads(gate.kubectl("admin", "get", "changeapprovals", "-n", ns, "-o",
                                     "json").out)["items"]
    ops = sorted((a["spec"]["operation"], a["spec"]["target"]["kind"],
                  a["spec"]["target"]["name"] == old) for a in listed
                 if a["spec"]["changeRecord"]["id"] == "CHG-11101")
    assert ops == [("CREATE", "ConfigMap", False), ("DELETE", "ConfigMap", True),
                   ("UPDATE", "Deployment", False)], ops
    before = gate.live_digest("deployment", "shop", ns)

    def release() -> tuple[int, str]:
        # The allowlist names the kinds a team prunes (kubectl's default list includes
        # kinds the team may not even list, and is deprecated).
        r = gate.kubectl("alice", "apply", "-n", ns, "--prune", "-l", SELECTOR,
                         "--prune-allowlist=core/v1/ConfigMap",
                         "--prune-allowlist=apps/v1/Deployment", "-f", str(v2))
        return r.rc, r.text

    rc, text = release()
    assert rc != 0 and "changegate" in text, text
    assert configmaps(gate, ns) == [old]
    assert gate.live_digest("deployment", "shop", ns) == before

    gate.approve("CHG-11101", ns)  # one review of the record: bob, then carol
    rc, text = release()
    assert rc == 0, text
    [new] = configmaps(gate, ns)
    assert new != old and new.startswith("shop-config-")
    live = gate.get("deployment", "shop", ns)
    assert live["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": new}}]
    for a in listed:
        if a["spec"]["changeRecord"]["id"] != "CHG-11101" or a["spec"]["operation"] == "DELETE":
            continue
        t = a["spec"]["target"]
        assert gate.live_digest(t["kind"].lower(), t["name"], ns) == a["spec"]["toDigest"]
    deleted = gate.decision(namespace=ns, name=old, operation="DELETE", decision="allowed")
    assert deleted["reason"] == "approved"
