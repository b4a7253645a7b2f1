"""Story 22: GitOps with the approvals in Git.

alice requests without writing to the cluster (`request --to-dir DIR --key`, signed with her
`role: requester` key); bob and carol sign the files offline (`approve -f`); the files are
merged; the GitOps controller's own identity (tests/cluster's `gitops` user, a pod-bound
token of system:serviceaccount:argocd:argocd-application-controller, in the policy's
trustedCreators) creates the ChangeApprovals first (sync wave -1 / dependsOn), then writes
the objects the way the real controllers do:
- Argo CD, client-side apply, with its tracking annotation and instance label;
- Argo CD with `ServerSideApply=true`: server-side apply, field manager argocd-controller;
- Flux kustomize-controller: server-side apply, field manager kustomize-controller, its
  labels (fluxcd/pkg/ssa forces ownership, as both SSA patterns here do).
The real controllers are not run (see docs/gitops.md): these are their writes, with their
identity, against the real API server and webhook.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stories import Gate, Result, configmap, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

GITOPS = "gitops"
# The controller is also an automation identity (the stories' policy, SPEC §6a): what it
# applies needs a senior signature (dana's) among the two.
SIGNERS = ("bob", "dana")


def argocd_meta(ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What Argo CD adds to each object before it writes it (tracking method annotation+label)."""
    group = obj["apiVersion"].rpartition("/")[0]
    m = obj["metadata"]
    m.setdefault("labels", {})["argocd.argoproj.io/instance"] = "shop"
    m.setdefault("annotations", {})["argocd.argoproj.io/tracking-id"] = \
        f"shop:{group}/{obj['kind']}:{ns}/{m['name']}"
    return obj


def flux_meta(ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    labels = obj["metadata"].setdefault("labels", {})
    labels["kustomize.toolkit.fluxcd.io/name"] = "shop"
    labels["kustomize.toolkit.fluxcd.io/namespace"] = "flux-system"
    return obj


# name -> (how the tool marks objects, kubectl flags of its write, request's flags)
PATTERNS = {
    "argocd": (argocd_meta, (), ()),
    "argocd-ssa": (argocd_meta, ("--server-side", "--force-conflicts",
                                 "--field-manager=argocd-controller"),
                   ("--server-side", "--force-conflicts", "--field-manager",
                    "argocd-controller")),
    "flux": (flux_meta, ("--server-side", "--force-conflicts",
                         "--field-manager=kustomize-controller"),
             ("--server-side", "--force-conflicts", "--field-manager",
              "kustomize-controller")),
}


def release(mark: Any, ns: str, image: str, timeout: str) -> list[dict[str, Any]]:
    return [mark(ns, deployment("shop", image)),
            mark(ns, configmap("shop-config", {"TIMEOUT_MS": timeout}))]


def sync(gate: Gate, ns: str, path: Path, flags: tuple[str, ...]) -> Result:
    """The controller writing the objects of a revision, as itself."""
    return gate.kubectl(GITOPS, "apply", *flags, "-n", ns, "-f", str(path))


def request_to_git(gate: Gate, ns: str, manifest: Path, record: str, repo: Path,
                   flags: tuple[str, ...]) -> list[Path]:
    """alice's request as files, signed offline by bob and dana: what gets merged."""
    approvals = repo / "approvals"
    r = gate.changegate("alice", "request", "-f", str(manifest), "-n", ns, "--record", record,
                        *flags, "--to-dir", str(approvals), "--key", str(gate.keys["alice"]))
    assert r.rc == 0, r.text
    assert "nothing created in the cluster" in r.out, r.out
    files = sorted(approvals.glob(f"{ns}.{record.lower()}-*.yaml"))
    assert len(files) == 2, r.out
    for who in SIGNERS:
        for f in files:
            s = gate.changegate(who, "approve", "-f", str(f), "--key", str(gate.keys[who]),
                                "--yes")
            assert s.rc == 0, s.text
    return files


def listed(gate: Gate, ns: str) -> list[str]:
    r = gate.kubectl("admin", "get", "changeapprovals", "-n", ns, "-o", "name")
    return r.out.split()


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_gitops_writes_are_admitted_under_approvals_from_git(gate: Gate, tmp_path: Path,
                                                             pattern: str):
    mark, write_flags, request_flags = PATTERNS[pattern]
    ns = gate.namespace(f"s12-{pattern}", tier1=False)
    v1 = write_manifest(tmp_path / "v1.yaml", *release(mark, ns, "1.0.0", "2500"))
    r = sync(gate, ns, v1, write_flags)
    assert r.rc == 0, r.err
    r = gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    assert r.rc == 0, r.err
    gate.wait_gated(ns)

    v2 = write_manifest(tmp_path / "v2.yaml", *release(mark, ns, "1.1.0", "250"))
    record = f"CHG-12{sorted(PATTERNS).index(pattern)}01"
    files = request_to_git(gate, ns, v2, record, tmp_path / "repo", request_flags)
    assert listed(gate, ns) == []  # nothing in the cluster yet
    signed = [yaml.safe_load(f.read_text()) for f in files]
    assert all(len(a["spec"]["signatures"]) == 3 for a in signed)  # alice, bob, dana

    # The sync before the approvals are in: refused, and nothing moves.
    before = {k: gate.live_digest(k, n, ns) for k, n in (("deployment", "shop"),
                                                          ("configmap", "shop-config"))}
    refused = sync(gate, ns, v2, write_flags)
    assert refused.rc != 0 and "changegate" in refused.err, refused.text
    assert {k: gate.live_digest(k, n, ns) for k, n in (("deployment", "shop"),
                                                        ("configmap", "shop-config"))} == before

    # Sync wave -1: the controller creates the ChangeApprovals from Git, then the objects.
    created = gate.kubectl(GITOPS, "apply", *write_flags, "-n", ns, "-f",
                           str(tmp_path / "repo" / "approvals"))
    assert created.rc == 0, created.text
    assert len(listed(gate, ns)) == 2
    landed = sync(gate, ns, v2, write_flags)
    assert landed.rc == 0, landed.text
    for a in signed:
        t = a["spec"]["target"]
        assert gate.live_digest(t["kind"].lower(), t["name"], ns) == a["spec"]["toDigest"]
        d = gate.decision(namespace=ns, name=t["name"], decision="allowed", reason="approved",
                          user="system:serviceaccount:argocd:argocd-application-controller")
        assert d["toDigest"] == a["spec"]["toDigest"]


def tamper_manifest(a: dict[str, Any]) -> None:
    a["spec"]["manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = \
        "registry.example/evil:latest"


def tamper_to_digest(a: dict[str, Any]) -> None:
    a["spec"]["toDigest"] = "sha256:" + "0" * 64


def tamper_expiry(a: dict[str, Any]) -> None:
    a["spec"]["expiresAt"] = "2099-01-01T00:00:00Z"


def tamper_requester(a: dict[str, Any]) -> None:
    a["spec"]["requestedBy"] = "carol"


def tamper_record(a: dict[str, Any]) -> None:
    a["spec"]["changeRecord"]["id"] = "CHG-99999"


def drop_requester_signature(a: dict[str, Any]) -> None:
    a["spec"]["signatures"] = a["spec"]["signatures"][1:]  # alice signed first


def tamper_statement(a: dict[str, Any]) -> None:
    """Edit the statement itself and the field with it, consistently: the signatures no
    longer verify over the new bytes."""
    st = json.loads(base64.b64decode(a["spec"]["statement"]))
    st["predicate"]["expiresAt"] = a["spec"]["expiresAt"] = "2099-01-01T00:00:00Z"
    a["spec"]["statement"] = base64.b64encode(json.dumps(st).encode()).decode()


# Each edit, and the reason the webhook gives for refusing the ChangeApproval.
TAMPERING = {tamper_manifest: "manifest_mismatch", tamper_to_digest: "spec_statement_mismatch",
             tamper_expiry: "spec_statement_mismatch",
             tamper_requester: "spec_statement_mismatch",
             tamper_record: "spec_statement_mismatch",
             drop_requester_signature: "requester_mismatch",
             # At the door, a signature that does not verify over the bytes (SPEC §4 rule 1).
             tamper_statement: "signature_invalid"}


def test_a_changeapproval_file_edited_after_signing_is_refused_at_create(gate: Gate,
                                                                         tmp_path: Path):
    mark = PATTERNS["argocd"][0]
    ns = gate.namespace("s12-tamper", *release(mark, "s12-tamper", "1.0.0", "2500"),
                        user=GITOPS)
    v2 = write_manifest(tmp_path / "v2.yaml", *release(mark, ns, "1.1.0", "250"))
    files = request_to_git(gate, ns, v2, "CHG-12901", tmp_path / "repo", ())
    [deploy_file] = [f for f in files if "-deployment-" in f.name]
    good = yaml.safe_load(deploy_file.read_text())
    for i, (edit, reason) in enumerate(TAMPERING.items()):
        bad = copy.deepcopy(good)
        bad["metadata"]["name"] = f"tampered-{i}"
        edit(bad)
        r = gate.kubectl(GITOPS, "create", "-n", ns, "-f", "-", input=json.dumps(bad))
        assert r.rc != 0 and "changegate" in r.err, (edit.__name__, r.text)
        assert f"reason: {reason}" in r.err, (edit.__name__, r.err)
    assert listed(gate, ns) == []
    # The untouched file is accepted from the same creator.
    r = gate.kubectl(GITOPS, "create", "-n", ns, "-f", str(deploy_file))
    assert r.rc == 0, r.text
