"""Story 1: an unapproved image change in a tier-1 namespace, through real kubectl.

`kubectl apply` is refused by the API server with changegate's actionable message; a
server-side dry-run shows the `would DENY` warning with both digests; `kubectl diff` works.
"""

from __future__ import annotations

from pathlib import Path

from .stories import Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def test_an_unapproved_image_change_is_denied_with_an_actionable_message(
        gate: Gate, tmp_path: Path):
    ns = gate.namespace("s1-denied", deployment("checkout", "1.41.0"))
    before = gate.get("deployment", "checkout", ns)
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))

    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))

    assert r.rc == 1, r.text
    assert 'admission webhook "deployments.changegate.io" denied the request' in r.err
    assert f"changegate: UPDATE Deployment {ns}/checkout denied: no ChangeApproval" in r.err
    assert "  reason: no_approval" in r.err
    assert f"  next: changegate request -f <manifest> -n {ns} --record <CHANGE-ID>" in r.err
    line = r.machine_line()
    assert (line["op"], line["approvals"], line["record"]) == ("UPDATE", "0/2", "none")
    # from= is the live object's digest, computed here with the same rules (SPEC §3).
    assert line["from"] == gate.live_digest("deployment", "checkout", ns)
    assert line["to"] != line["from"]
    assert f"  from: {line['from']}" in r.err and f"  to:   {line['to']}" in r.err
    after = gate.get("deployment", "checkout", ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.41.0")

    # A server-side dry-run is admitted with the would-DENY warnings, each digest on its own
    # line, the same digests as the real request's.
    dry = gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-f", str(v2))
    assert dry.rc == 0, dry.text
    assert "deployment.apps/checkout configured (server dry run)" in dry.out
    warnings = [w.removeprefix("Warning: ") for w in dry.err.splitlines()
                if w.startswith("Warning: ")]
    assert warnings[0].startswith("changegate: would DENY: no_approval: "), dry.err
    assert f"changegate: from {line['from']}" in warnings
    assert f"changegate: to {line['to']}" in warnings
    assert warnings[-1] == line.group(0)
    assert all(len(w) < 256 for w in warnings)
    strict = gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server",
                          "--warnings-as-errors", "-f", str(v2))
    assert strict.rc != 0, "--warnings-as-errors is the strict preflight"

    # kubectl diff: exit 1 and a diff (not an error, which would be exit > 1).
    diff = gate.kubectl("alice", "diff", "-n", ns, "-f", str(v2))
    assert diff.rc == 1, diff.text
    assert "-      - image: registry.example/checkout:1.41.0" in diff.out
    assert "+      - image: registry.example/checkout:1.42.0" in diff.out
    assert gate.get("deployment", "checkout", ns)["metadata"]["resourceVersion"] == \
        before["metadata"]["resourceVersion"]

    # The webhook's decision log has the same verdict and digests.
    logged = gate.decision(namespace=ns, name="checkout", dryRun=False, operation="UPDATE")
    assert (logged["decision"], logged["reason"], logged["user"]) == (
        "denied", "no_approval", "alice")
    assert (logged["fromDigest"], logged["toDigest"]) == (line["from"], line["to"])
