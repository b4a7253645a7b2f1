"""The canary gate (SPEC §7) on fake nodes (kwok), with the real webhook and the
real operator. In a canary namespace a Deployment change runs first as `<name>-canary`
(after canaryMinApprovals = 1 approval), is promoted through the webhook once every
approval is in and the canary stayed healthy for its bake, and ends Applied with its nonce
in the ledger. A canary whose pods fail (kwok's chaos stage) ends CanaryFailed, the main
Deployment untouched; so does one aborted mid-bake. alice can neither create a canary
herself nor update the Deployment directly; a canary scaled past its approval is stopped.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import FAIL_CONTAINERS_LABEL

from .stories import CONTROLLER, POLICY_ADMINS, Gate, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]

NAME = "checkout"


def app(image: str, chaos: bool = False) -> dict[str, Any]:
    d = deployment(NAME, image, replicas=2)
    if chaos:
        tmpl = d["spec"]["template"]["metadata"]
        tmpl["labels"][FAIL_CONTAINERS_LABEL] = "true"
        tmpl["annotations"] = {f"{FAIL_CONTAINERS_LABEL}/exit-code": "3",
                               f"{FAIL_CONTAINERS_LABEL}/reason": "Error"}
    return d


@pytest.fixture(scope="module")
def ns(gate: Gate, nodes: list[str]) -> Iterator[str]:
    name = gate.namespace("s10-canary", app("1.0"), tier1=False)
    # The team onboards it in canary mode with the CLI: label and mode in one write.
    r = gate.changegate("admin", "onboard", name, "--mode", "canary")
    assert r.rc == 0, r.text
    assert "enforcement canary" in r.out
    gate.wait_gated(name)
    r = gate.kubectl("admin", "rollout", "status", f"deployment/{NAME}", "-n", name,
                     "--timeout=60s", timeout=70)
    assert r.rc == 0, r.text
    yield name
    # Before `nodes` ends, so kwok finishes the Pods. Deleting a tier-1 namespace is the
    # policy admins' (namespace guard): one of them takes it out of the tier first.
    r = gate.kubectl("admin", "label", "namespace", name, "tier-", "--as=pat",
                     f"--as-group={POLICY_ADMINS}")
    assert r.rc == 0, r.text
    gate.cluster.delete_namespace(name)


def phase(gate: Gate, ns: str, name: str) -> str:
    return str((gate.approval(ns, name).get("status") or {}).get("phase") or "")


def image_of(obj: dict[str, Any] | None) -> str:
    return (obj or {})["spec"]["template"]["spec"]["containers"][0]["image"]


def canary_ready(gate: Gate, ns: str) -> dict[str, Any] | None:
    c = gate.get("deployment", f"{NAME}-canary", ns)
    status = (c or {}).get("status") or {}
    return c if c and status.get("readyReplicas") == c["spec"]["replicas"] else None


def condition(gate: Gate, ns: str, name: str) -> dict[str, Any]:
    status = gate.approval(ns, name).get("status") or {}
    return next(c for c in status.get("conditions") or [] if c["type"] == "Canary")


def events(gate: Gate, ns: str, name: str, reason: str) -> list[str]:
    r = gate.kubectl("admin", "get", "events", "-n", ns, "-o", "json", "--field-selector",
                     f"involvedObject.name={name},reason={reason}")
    return [e["message"] for e in json.loads(r.out)["items"]] if r.rc == 0 else []


def runs(gate: Gate, result: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gate.operator_port}/metrics",
                                timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith(f'changegate_canary_runs_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def request(gate: Gate, ns: str, tmp: Path, record: str, image: str, *, bake: str,
            chaos: bool = False, expires: str = "4h") -> str:
    path = write_manifest(tmp / f"{record}.yaml", app(image, chaos))
    r = gate.changegate("alice", "request", "-f", str(path), "-n", ns, "--record", record,
                        "--canary", "--bake", bake, "--expires", expires)
    assert r.rc == 0, r.text
    return f"{record.lower()}-deployment-{NAME}"


def test_direct_changes_in_a_canary_namespace_are_denied(gate: Gate, ns: str, tmp_path: Path):
    path = write_manifest(tmp_path / "v2.yaml", app("2.0"))
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(path))
    assert r.rc == 1, r.text
    assert "reason: canary_required" in r.err
    assert "only through a canary" in r.err and "changegate request --canary" in r.err
    own = deployment(f"{NAME}-canary", "2.0", replicas=1)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", "-", input=json.dumps(own))
    assert r.rc == 1, r.text
    assert "only the changegate operator creates a canary" in r.err
    assert gate.get("deployment", f"{NAME}-canary", ns) is None


def test_canary_runs_after_one_approval_and_promotes_after_the_second(gate: Gate, ns: str,
                                                                     tmp_path: Path):
    name = request(gate, ns, tmp_path, "CHG-1001", "2.0", bake="5s")
    assert gate.get("deployment", f"{NAME}-canary", ns) is None  # no approval, no canary
    gate.approve("CHG-1001", ns, "bob")
    canary = wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=60)
    assert image_of(canary).endswith(":2.0")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["metadata"]["labels"]["changegate.io/canary"] == "true"
    owner = canary["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ChangeApproval", name)
    assert image_of(gate.get("deployment", NAME, ns)).endswith(":1.0")
    pods = json.loads(gate.kubectl("admin", "get", "pods", "-n", ns, "-l",
                                   "changegate.io/canary=true", "-o", "json").out)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert phase(gate, ns, name) == "CanaryRunning"
    wait_for(lambda: condition(gate, ns, name)["reason"] == "WaitingForApprovals",
             "the bake done, waiting for the second approval", timeout=30)
    s = gate.changegate("alice", "status", name, "-n", ns)
    assert s.rc == 0 and "Canary:" in s.out and "WaitingForApprovals" in s.out, s.text
    assert image_of(gate.get("deployment", NAME, ns)).endswith(":1.0")

    gate.approve("CHG-1001", ns, "carol")
    wait_for(lambda: phase(gate, ns, name) == "Applied", "Applied", timeout=60)
    live = gate.get("deployment", NAME, ns)
    assert image_of(live).endswith(":2.0")
    ca = gate.approval(ns, name)
    assert gate.live_digest("deployment", NAME, ns) == ca["spec"]["toDigest"]
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    nonce = json.loads(base64.b64decode(ca["spec"]["statement"]))["predicate"]["nonce"]
    ledger = gate.get("configmap", f"changegate-ledger-{nonce[0]}", CONTROLLER) or {}
    assert nonce in (ledger.get("data") or {})
    assert ca["status"]["canary"]["result"] == "promoted"
    promoted = gate.decision(namespace=ns, name=NAME, decision="allowed", reason="approved")
    assert promoted["approval"] == name
    assert events(gate, ns, name, "CanaryPromoted")
    assert runs(gate, "promoted") >= 1
    r = gate.changegate("alice", "list", "-n", ns)
    assert r.rc == 0 and name in r.out and "Applied" in r.out, r.text


def test_failing_canary_ends_canary_failed_and_leaves_the_deployment(gate: Gate, ns: str,
                                                                    tmp_path: Path):
    before = gate.live_digest("deployment", NAME, ns)
    name = request(gate, ns, tmp_path, "CHG-1002", "3.0", bake="20s", chaos=True)
    gate.approve("CHG-1002", ns, "bob", "carol")
    wait_for(lambda: phase(gate, ns, name) == "CanaryFailed", "CanaryFailed", timeout=90)
    cond = condition(gate, ns, name)
    assert cond["status"] == "False" and cond["reason"] in ("PodFailed", "ContainerFailed")
    assert "exit" in cond["message"] or "failed" in cond["message"]
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    assert gate.live_digest("deployment", NAME, ns) == before
    assert image_of(gate.get("deployment", NAME, ns)).endswith(":2.0")
    assert wait_for(lambda: events(gate, ns, name, "CanaryFailed"), "the CanaryFailed Event")
    assert runs(gate, "unhealthy") >= 1
    r = gate.changegate("alice", "list", "-n", ns)
    assert "CanaryFailed" in r.out, r.text


def test_abort_mid_bake(gate: Gate, ns: str, tmp_path: Path):
    before = gate.live_digest("deployment", NAME, ns)
    name = request(gate, ns, tmp_path, "CHG-1003", "4.0", bake="10m")
    gate.approve("CHG-1003", ns, "bob", "carol")
    wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=60)
    wait_for(lambda: condition(gate, ns, name)["reason"] == "Baking", "baking", timeout=30)
    r = gate.changegate("alice", "canary", "abort", name, "-n", ns, "--reason", "not today")
    assert r.rc == 0, r.text
    wait_for(lambda: phase(gate, ns, name) == "CanaryFailed", "CanaryFailed", timeout=30)
    cond = condition(gate, ns, name)
    assert cond["reason"] == "Aborted" and "alice" in cond["message"]
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    assert gate.live_digest("deployment", NAME, ns) == before
    assert runs(gate, "aborted") >= 1
    again = gate.changegate("alice", "canary", "abort", name, "-n", ns)
    assert again.rc != 0 and "has ended" in again.text


def test_a_canary_scaled_past_its_approval_is_stopped(gate: Gate, ns: str, tmp_path: Path):
    """Scale-ups skip the webhook (SPEC §5): the operator sees the size and ends the run."""
    before = gate.live_digest("deployment", NAME, ns)
    name = request(gate, ns, tmp_path, "CHG-1004", "5.0", bake="10m")
    gate.approve("CHG-1004", ns, "bob")
    wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=60)
    r = gate.kubectl("alice", "scale", f"deployment/{NAME}-canary", "--replicas=3", "-n", ns)
    assert r.rc == 0, r.text  # admitted: a scale-up never reaches the webhook
    wait_for(lambda: phase(gate, ns, name) == "CanaryFailed", "CanaryFailed", timeout=30)
    cond = condition(gate, ns, name)
    assert cond["reason"] == "CanaryChanged" and "scaled to 3" in cond["message"]
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    assert gate.live_digest("deployment", NAME, ns) == before


def test_an_operator_restart_mid_bake_resumes_the_bake(gate: Gate, ns: str, tmp_path: Path):
    """Progress is the approval's status: a new operator process neither restarts the bake
    nor creates a second canary, and promotes when the first one would have."""
    name = request(gate, ns, tmp_path, "CHG-1005", "6.0", bake="12s")
    gate.approve("CHG-1005", ns, "bob", "carol")
    canary = wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=60)
    wait_for(lambda: condition(gate, ns, name)["reason"] == "Baking", "baking", timeout=30)
    since = gate.approval(ns, name)["status"]["canary"]["healthySince"]
    gate._stop(gate.operator)
    time.sleep(3)
    gate.start_operator()
    wait_for(lambda: phase(gate, ns, name) == "Applied", "Applied", timeout=60)
    progress = gate.approval(ns, name)["status"]["canary"]
    assert progress["healthySince"] == since
    baked = (datetime.fromisoformat(progress["promotedAt"].replace("Z", "+00:00"))
             - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds()
    assert baked >= 12
    assert image_of(gate.get("deployment", NAME, ns)).endswith(":6.0")
    # One canary for the run: the new process took up the one the old one created.
    created = [d for d in gate.decisions(namespace=ns, name=f"{NAME}-canary",
                                         decision="allowed")
               if d.get("operation") == "CREATE" and d.get("approval") == name]
    assert len(created) == 1, created
    assert canary["metadata"]["ownerReferences"][0]["name"] == name
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)


def test_an_approval_expiring_mid_bake_ends_the_run(gate: Gate, ns: str, tmp_path: Path):
    before = gate.live_digest("deployment", NAME, ns)
    name = request(gate, ns, tmp_path, "CHG-1006", "7.0", bake="10m", expires="40s")
    gate.approve("CHG-1006", ns, "bob", "carol")
    wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=30)
    wait_for(lambda: phase(gate, ns, name) == "CanaryFailed", "CanaryFailed", timeout=60)
    assert condition(gate, ns, name)["reason"] == "ApprovalExpired"
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    assert gate.live_digest("deployment", NAME, ns) == before
    assert runs(gate, "expired") >= 1


def test_deleting_the_approval_mid_bake_ends_the_run(gate: Gate, ns: str, tmp_path: Path):
    before = gate.live_digest("deployment", NAME, ns)
    name = request(gate, ns, tmp_path, "CHG-1007", "8.0", bake="10m")
    gate.approve("CHG-1007", ns, "bob")
    wait_for(lambda: canary_ready(gate, ns), "the canary Ready", timeout=60)
    r = gate.kubectl("alice", "delete", "changeapproval", name, "-n", ns, "--wait=false")
    assert r.rc == 0, r.text
    wait_for(lambda: gate.get("deployment", f"{NAME}-canary", ns) is None, "canary gone",
             timeout=30)
    assert wait_for(lambda: events(gate, ns, name, "CanaryFailed"), "the CanaryFailed Event")
    assert runs(gate, "deleted") >= 1
    assert gate.live_digest("deployment", NAME, ns) == before
