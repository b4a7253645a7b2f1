"""Story 10 (SPEC §6a): an AI-assisted change, and a change the GitOps controller (listed
under the policy's `automation`) applies, need a senior signature on top of two approvals.
bob and carol approve; dana is the senior approver."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import GITOPS, GITOPS_USER

from .stories import Gate, Result, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def image(gate: Gate, ns: str) -> str:
    return gate.get("deployment", "checkout", ns)["spec"]["template"]["spec"]["containers"][0][
        "image"]


def approved_condition(gate: Gate, ns: str, name: str) -> dict:
    status = gate.approval(ns, name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Approved"), {})


def apply_until_admitted(gate: Gate, user: str, ns: str, path: Path) -> Result:
    """The webhook reads the senior's signature from its cache; a denial meanwhile changes
    nothing, so a retry is what a person would do."""
    last: list[Result] = []

    def attempt() -> bool:
        last[:] = [gate.kubectl(user, "apply", "-n", ns, "-f", str(path))]
        return last[0].rc == 0

    wait_for(attempt, f"{user}'s apply admitted", timeout=20, interval=1.0)
    return last[0]


def test_an_ai_assisted_change_needs_a_senior_signature(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s10-ai", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    name = "chg-10001-deployment-checkout"
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-10001",
                          "--assisted", "ai")
    assert req.rc == 0, req.text
    assert gate.approval(ns, name)["spec"]["assistance"] == "ai"
    gate.approve("CHG-10001", ns)  # bob and carol: two approvals, neither senior

    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: senior_approval_required" in r.err
    assert "1 senior signature missing" in r.err and "it is AI-assisted" in r.err
    assert "could sign in " + ns + ": dana" in r.err
    assert r.machine_line()["approvals"] == "2/2"  # the count is met; the senior is not
    assert image(gate, ns).endswith(":1.41.0")
    wait_for(lambda: approved_condition(gate, ns, name).get("reason") == "SeniorApprovalRequired",
             "the operator's Approved condition to say a senior is missing", timeout=60)
    status = gate.changegate("alice", "status", name, "-n", ns)
    assert "Assistance:    ai (AI-assisted: needs a senior signature)" in status.out

    senior = gate.changegate("dana", "approve", "--record", "CHG-10001", "-n", ns, "--key",
                             str(gate.keys["dana"]), "--yes")
    assert senior.rc == 0, senior.text
    assert "yours is the senior signature this change waits for" in senior.out
    apply_until_admitted(gate, "alice", ns, v2)
    assert image(gate, ns).endswith(":1.42.0")
    logged = gate.decision(namespace=ns, name="checkout", reason="approved")
    assert "dana" in logged["approvers"], logged


def test_a_change_the_gitops_controller_applies_needs_a_senior_too(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s10-gitops", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-10002")
    assert req.rc == 0, req.text
    gate.approve("CHG-10002", ns)  # bob and carol; no AI declared

    # A person applying it needs no senior (dry-run: nothing is used)...
    person = gate.kubectl("alice", "apply", "--dry-run=server", "-n", ns, "-f", str(v2))
    assert person.rc == 0 and "would DENY" not in person.err, person.text
    # ...the GitOps controller, an automation identity, does.
    r = gate.kubectl(GITOPS, "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: senior_approval_required" in r.err
    assert f"applied by automation identity {GITOPS_USER}" in r.err
    assert image(gate, ns).endswith(":1.41.0")

    gate.approve("CHG-10002", ns, "dana")
    apply_until_admitted(gate, GITOPS, ns, v2)
    assert image(gate, ns).endswith(":1.42.0")
    assert gate.decision(namespace=ns, name="checkout", reason="approved",
                         user=GITOPS_USER)["allowed"]
