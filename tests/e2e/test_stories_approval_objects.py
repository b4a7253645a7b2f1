"""Story 8: the webhook validates ChangeApprovals themselves: `requestedBy` is whoever
creates it, what reviewers read is what they sign, and the spec cannot change under the
signatures. And what kube-apiserver does with the webhook's auditAnnotations.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from changegate.core.compose import change_approval, manifest_for
from changegate.core.digest import digest

from .stories import CLUSTER_NAME, Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def approval_for(gate: Gate, ns: str, tmp_path: Path, *, requested_by: str,
                 name: str = "chg-8001-checkout") -> dict[str, Any]:
    """A well-formed, unsigned ChangeApproval for checkout 1.41.0 -> 1.42.0 in `ns`."""
    live = gate.get("deployment", "checkout", ns)
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    proposed = json.loads(gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-o",
                                       "json", "-f", str(v2)).out)
    now = datetime.now(UTC).replace(microsecond=0)
    return change_approval(
        namespace=ns, name=name, cluster=CLUSTER_NAME,
        target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": live["metadata"]["uid"]},
        operation="UPDATE", from_digest=digest(live), to_digest=digest(proposed),
        record_id="CHG-8001", record_url=None, requested_by=requested_by,
        issued_at=now, expires_at=now + timedelta(hours=1), manifest=manifest_for(proposed),
        nonce=str(uuid.uuid4()))


def test_an_approval_naming_someone_else_as_requester_is_rejected_at_create(
        gate: Gate, tmp_path: Path):
    ns = gate.namespace("s8-creator", deployment("checkout", "1.41.0"))
    body = json.dumps(approval_for(gate, ns, tmp_path, requested_by="alice"))

    r = gate.kubectl("bob", "create", "-f", "-", input=body)
    assert r.rc == 1, r.text
    assert 'admission webhook "changeapprovals.changegate.io" denied the request' in r.err
    assert "reason: requester_mismatch" in r.err
    assert "requestedBy is 'alice' but 'bob' creates it" in r.err
    assert gate.get("changeapprovals.changegate.io", "chg-8001-checkout", ns) is None

    # The same object, created by alice herself, is stored.
    ok = gate.kubectl("alice", "create", "-f", "-", input=body)
    assert ok.rc == 0, ok.text
    assert gate.approval(ns, "chg-8001-checkout")["spec"]["requestedBy"] == "alice"

    # Nobody can change what is signed afterwards, not even alice (only append signatures).
    swap = gate.kubectl("alice", "patch", "changeapproval", "chg-8001-checkout", "-n", ns,
                        "--type=merge", "-p", json.dumps({"spec": {"requestedBy": "bob"}}))
    assert swap.rc == 1, swap.text
    assert gate.approval(ns, "chg-8001-checkout")["spec"]["requestedBy"] == "alice"


def test_an_approval_whose_manifest_is_not_its_to_digest_is_rejected(gate: Gate,
                                                                     tmp_path: Path):
    ns = gate.namespace("s8-manifest", deployment("checkout", "1.41.0"))
    approval = approval_for(gate, ns, tmp_path, requested_by="alice", name="chg-8002-checkout")
    sneaky = copy.deepcopy(approval)
    sneaky["spec"]["manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = \
        "registry.example/checkout:evil"
    r = gate.kubectl("alice", "create", "-f", "-", input=json.dumps(sneaky))
    assert r.rc == 1, r.text
    assert "reason: manifest_mismatch" in r.err
    assert "reviewers must read what they sign" in r.err
    assert gate.get("changeapprovals.changegate.io", "chg-8002-checkout", ns) is None


def _audit_event(gate: Gate, ns: str, code: int) -> dict[str, Any]:
    """The audit event of alice's (non-dry-run) patch of checkout in `ns` answered `code`."""
    deadline = time.monotonic() + 15
    while True:
        for line in gate.cluster.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (ref.get("namespace") == ns and ref.get("name") == "checkout"
                    and ref.get("resource") == "deployments" and event.get("verb") == "patch"
                    and event.get("stage") == "ResponseComplete"
                    and event["user"]["username"] == "alice"
                    and "dryRun" not in event.get("requestURI", "")
                    and (event.get("responseStatus") or {}).get("code") == code):
                return event
        assert time.monotonic() < deadline, "no audit event for alice's patch"
        time.sleep(0.3)


def test_the_audit_log_has_the_denial_and_its_machine_readable_line(gate: Gate,
                                                                    tmp_path: Path):
    """What the API server's audit log (Metadata level) keeps of a denial: the full message,
    machine-readable line included, in responseStatus."""
    ns = gate.namespace("s8-audit", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    event = _audit_event(gate, ns, 403)
    message = event["responseStatus"]["message"]
    assert message.startswith('admission webhook "deployments.changegate.io" denied the request')
    assert message.endswith(r.machine_line().group(0))


def test_the_audit_log_keeps_the_webhooks_audit_annotations(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s8-annotations", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    line = r.machine_line()
    annotations = _audit_event(gate, ns, 403).get("annotations") or {}
    ours = {k: v for k, v in annotations.items() if k.startswith("deployments.changegate.io/")}
    assert ours.get("deployments.changegate.io/decision") == "denied:no_approval", annotations
    assert ours.get("deployments.changegate.io/to") == line["to"]
