"""Story 4: the digest the requester's dry-run computed is the digest the webhook sees, for
client-side apply (last-applied annotation) and server-side apply (managedFields); and a
restart goes through `changegate request --restart`, since `kubectl rollout restart` cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

from .stories import Gate, Result, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def warning_digests(r: Result) -> tuple[str, str]:
    """(from, to) of a dry-run's `changegate: from ...` / `changegate: to ...` warnings."""
    lines = [w.removeprefix("Warning: ") for w in r.err.splitlines()]
    got = {w.split()[1]: w.split()[2] for w in lines
           if w.startswith(("changegate: from ", "changegate: to "))}
    return got["from"], got["to"]


def test_client_side_apply_has_the_digest_the_requester_signed(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s4-csa", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0", replicas=3))
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-4101")
    assert req.rc == 0, req.text
    ca = gate.approval(ns, "chg-4101-deployment-checkout")
    assert ca["metadata"]["annotations"]["changegate.io/write"] == "client-side-apply"
    to_digest = ca["spec"]["toDigest"]

    dry = gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-f", str(v2))
    assert dry.rc == 0, dry.text
    assert warning_digests(dry) == (ca["spec"]["fromDigest"], to_digest)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert r.machine_line()["to"] == to_digest  # byte for byte
    logged = gate.decision(namespace=ns, name="checkout", dryRun=False, operation="UPDATE")
    assert logged["toDigest"] == to_digest

    gate.approve("CHG-4101", ns)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text
    logged = gate.decision(namespace=ns, name="checkout", decision="allowed", reason="approved")
    assert logged["toDigest"] == to_digest
    live = gate.get("deployment", "checkout", ns)
    assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]
    assert gate.live_digest("deployment", "checkout", ns) == to_digest


def test_server_side_apply_has_the_digest_the_requester_signed(gate: Gate, tmp_path: Path):
    # The team writes by server-side apply: managedFields, no last-applied annotation.
    ns = gate.namespace("s4-ssa", deployment("checkout", "1.41.0"), server_side=True)
    live = json.loads(gate.kubectl("admin", "get", "deployment", "checkout", "-n", ns, "-o",
                                   "json", "--show-managed-fields").out)
    assert "kubectl.kubernetes.io/last-applied-configuration" not in \
        (live["metadata"].get("annotations") or {})
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply"
               for m in live["metadata"]["managedFields"])

    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    req = gate.changegate("alice", "request", "--server-side", "-f", str(v2), "-n", ns,
                          "--record", "CHG-4201")
    assert req.rc == 0, req.text
    ca = gate.approval(ns, "chg-4201-deployment-checkout")
    assert ca["metadata"]["annotations"]["changegate.io/write"] == "server-side-apply"
    to_digest = ca["spec"]["toDigest"]

    dry = gate.kubectl("alice", "apply", "--server-side", "-n", ns, "--dry-run=server",
                       "-f", str(v2))
    assert dry.rc == 0, dry.text
    assert warning_digests(dry) == (ca["spec"]["fromDigest"], to_digest)
    r = gate.kubectl("alice", "apply", "--server-side", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert r.machine_line()["to"] == to_digest

    gate.approve("CHG-4201", ns)
    r = gate.kubectl("alice", "apply", "--server-side", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text
    assert "serverside-applied" in r.out
    logged = gate.decision(namespace=ns, name="checkout", decision="allowed", reason="approved")
    assert logged["toDigest"] == to_digest
    assert gate.live_digest("deployment", "checkout", ns) == to_digest


def test_rollout_restart_is_denied_and_the_approved_restart_works(gate: Gate):
    ns = gate.namespace("s4-restart", deployment("checkout", "1.41.0"))
    before = gate.get("deployment", "checkout", ns)

    r = gate.kubectl("alice", "rollout", "restart", "deployment/checkout", "-n", ns)
    assert r.rc == 1, r.text
    assert "reason: restart_unapproved" in r.err
    assert "`kubectl rollout restart` stamps the time when it runs" in r.err
    assert f"next: changegate request --restart deployment/checkout -n {ns} --record" in r.err
    assert r.machine_line()["op"] == "UPDATE"
    assert gate.get("deployment", "checkout", ns)["metadata"]["resourceVersion"] == \
        before["metadata"]["resourceVersion"]

    req = gate.changegate("alice", "request", "--restart", "deployment/checkout", "-n", ns,
                          "--record", "CHG-4301")
    assert req.rc == 0, req.text
    ca = gate.approval(ns, "chg-4301-deployment-checkout")
    stamp = ca["spec"]["manifest"]["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"]
    early = gate.changegate("alice", "apply", "chg-4301-deployment-checkout", "-n", ns)
    assert early.rc == 2 and "not ready to apply" in early.err, early.text

    gate.approve("CHG-4301", ns)
    done = gate.changegate("alice", "apply", "chg-4301-deployment-checkout", "-n", ns)
    assert done.rc == 0, done.text
    after = gate.get("deployment", "checkout", ns)
    assert after["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"] == stamp
    assert gate.live_digest("deployment", "checkout", ns) == ca["spec"]["toDigest"]
    # The deployment controller rolls a new ReplicaSet: the restart happened.
    wait_for(lambda: len(json.loads(gate.kubectl(
        "admin", "get", "replicasets", "-n", ns, "-l", "app=checkout", "-o", "json").out)
        ["items"]) == 2, "a second ReplicaSet")
