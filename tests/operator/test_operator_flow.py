"""The operator end to end against the fake API server (tests/fakeapi.py): phases,
signatures, expiry, the ledger, the target annotation, and restarts. Real keys and
signatures throughout."""

from __future__ import annotations

import json
from datetime import timedelta

from changegate.core.compose import statement_bytes
from changegate.core.digest import digest
from changegate.core.dsse import generate, sign_envelope
from changegate.core.statement import parse_statement
from tests.operator.conftest import (
    CONFIGMAPS,
    CONTROLLER_NS,
    DEPLOYMENTS,
    NS,
    eventually,
    sign,
    update_approval,
)
from tests.support import key

NAME = "chg-1234"


def nonce_of(approval):
    return parse_statement(statement_bytes(approval)).predicate.nonce


async def test_an_unsigned_approval_is_pending_and_says_who_may_sign(k8s, operator):
    live = await k8s.setup()
    approval, _ = update_approval(live)
    async with operator():
        await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase(NAME) == "Pending", what="Pending")
        await eventually(lambda: "Pending" in k8s.event_reasons(NAME), what="Pending Event")
    status = k8s.approval(NAME)["status"]
    assert (status["approvals"], status["required"], status["approvers"]) == (0, 2, [])
    assert k8s.condition(NAME, "Verified")["reason"] == "NotSigned"
    approved = k8s.condition(NAME, "Approved")
    assert (approved["status"], approved["reason"]) == ("False", "ApprovalsInsufficient")
    # alice requested it; frank approves only in shipping: neither is offered.
    assert "0/2 approvals; needs 2 more from: bob, carol, dave, erin" in approved["message"]
    assert k8s.condition(NAME, "Expired")["status"] == "False"


async def test_the_namespace_can_raise_the_required_approvals(k8s, operator):
    live = await k8s.setup(namespace_annotations={"changegate.io/required-approvals": "3"})
    approval, _ = update_approval(live)
    async with operator():
        await k8s.create_approval(sign(approval, "bob", "carol"))
        await eventually(lambda: k8s.approval(NAME).get("status", {}).get("approvals") == 2)
    assert (k8s.phase(NAME), k8s.approval(NAME)["status"]["required"]) == ("Pending", 3)
    assert "needs 1 more from: dave, erin" in k8s.condition(NAME, "Approved")["message"]


async def test_two_valid_signatures_approve_and_the_events_name_the_signers(k8s, operator):
    live = await k8s.setup()
    approval, _ = update_approval(live)
    async with operator():
        await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase(NAME) == "Pending")
        await k8s.add_signatures(NAME, sign(approval, "bob"))
        await eventually(lambda: "Signed" in k8s.event_reasons(NAME), what="Signed Event")
        assert k8s.phase(NAME) == "Pending"
        await k8s.add_signatures(NAME, sign(approval, "bob", "erin"))
        await eventually(lambda: k8s.phase(NAME) == "Approved", what="Approved")
        await eventually(lambda: "Approved" in k8s.event_reasons(NAME), what="Approved Event")
    status = k8s.approval(NAME)["status"]
    assert (status["approvers"], status["approvals"]) == (["bob", "erin"], 2)
    assert k8s.condition(NAME, "Verified") | {"lastTransitionTime": None} == {
        "type": "Verified", "status": "True", "reason": "SignaturesValid",
        "message": "2 of 2 signatures verify (bob, erin)", "lastTransitionTime": None,
        "observedGeneration": 3}  # created, then two signature patches: each changes the spec
    assert k8s.condition(NAME, "Applied")["reason"] == "WaitingForTarget"
    messages = {e["reason"]: e["message"] for e in k8s.kube.events(NS, NAME)}
    assert "signed by bob (1/2)" in messages["Signed"]
    assert "approved by bob, erin (2/2)" in messages["Approved"]
    assert f"changegate apply {NAME} -n {NS}" in messages["Approved"]


async def test_a_forged_signature_keeps_it_pending_and_names_the_bad_signature(k8s, operator):
    live = await k8s.setup()
    approval, _ = update_approval(live)
    forged = sign_envelope(generate(), statement_bytes(approval))
    forged["keyid"] = key("carol").public.keyid  # claims to be carol's
    tampered = sign(approval, "bob")
    tampered["spec"]["signatures"].append(forged)
    async with operator():
        await k8s.create_approval(tampered)
        await eventually(lambda: k8s.condition(NAME, "Verified").get("status") == "False")
        await eventually(lambda: "SignatureInvalid" in k8s.event_reasons(NAME))
    assert k8s.phase(NAME) == "Pending"
    verified = k8s.condition(NAME, "Verified")
    assert verified["reason"] == "SignatureInvalid"
    assert "signatures[1] claims carol's key but does not verify" in verified["message"]
    assert k8s.approval(NAME)["status"]["approvers"] == ["bob"]
    warning = next(e for e in k8s.kube.events(NS, NAME) if e["reason"] == "SignatureInvalid")
    assert warning["type"] == "Warning" and "signatures[1]" in warning["message"]


async def test_a_forged_signature_next_to_two_good_ones_spoils_nothing_but_is_shown(
        k8s, operator):
    """SPEC §4 rule 1, as the webhook does: a signature that does not count admits nothing
    and spoils nothing (else anyone could append junk to block an approval); the operator
    shows it in the Verified condition."""
    live = await k8s.setup()
    approval, _ = update_approval(live)
    forged = sign_envelope(generate(), statement_bytes(approval))
    forged["keyid"] = key("dave").public.keyid
    tampered = sign(approval, "bob", "carol")
    tampered["spec"]["signatures"].append(forged)
    async with operator():
        await k8s.create_approval(tampered)
        await eventually(lambda: k8s.condition(NAME, "Verified").get("status") == "False")
        await eventually(lambda: k8s.phase(NAME) == "Approved")
    assert k8s.condition(NAME, "Verified")["reason"] == "SignatureInvalid"
    assert k8s.approval(NAME)["status"]["approvers"] == ["bob", "carol"]


async def test_time_past_expiry_moves_it_to_expired_and_releases_the_finalizer(
        k8s, operator, clock):
    live = await k8s.setup()
    approval, _ = update_approval(live, lifetime=timedelta(hours=1))
    async with operator():
        await k8s.create_approval(sign(approval, "bob"))
        await eventually(lambda: k8s.phase(NAME) == "Pending")
        await eventually(lambda: k8s.approval(NAME)["metadata"].get("finalizers"))
        clock.advance(timedelta(minutes=56))  # issued 5 min before START, 1 h lifetime
        await eventually(lambda: k8s.phase(NAME) == "Expired", what="Expired")
        await eventually(lambda: not k8s.approval(NAME)["metadata"].get("finalizers"),
                         what="finalizer removed once nothing can change")
        await eventually(lambda: "Expired" in k8s.event_reasons(NAME))
    assert k8s.condition(NAME, "Expired")["status"] == "True"
    assert k8s.condition(NAME, "Applied")["reason"] == "Expired"
    assert not k8s.ledger()


async def test_the_target_reaching_to_digest_applies_it_and_records_the_nonce(k8s, operator):
    live = await k8s.setup()
    approval, manifest = update_approval(live)
    approval = sign(approval, "bob", "carol")
    nonce = nonce_of(approval)
    async with operator() as ctx:
        created = await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase(NAME) == "Approved")
        await k8s.apply_deployment(manifest)
        await eventually(lambda: k8s.phase(NAME) == "Applied", what="Applied")
        await eventually(lambda: "ChangeApproved" in k8s.event_reasons("checkout"))
    ledger = k8s.ledger()
    assert list(ledger) == [nonce]
    assert json.loads(ledger[nonce]) == {
        "approval": f"{NS}/{NAME}", "uid": created["metadata"]["uid"],
        "target": f"k8s://apps/v1/namespaces/{NS}/deployments/checkout",
        "expiresAt": approval["spec"]["expiresAt"]}
    shard = k8s.kube.obj(CONFIGMAPS, CONTROLLER_NS, f"changegate-ledger-{nonce[0]}")
    assert nonce in shard["data"]
    target = k8s.kube.obj(DEPLOYMENTS, NS, "checkout")
    assert target["metadata"]["annotations"] == {
        "changegate.io/approval": f"CHG-1234 {NS}/{NAME} approved-by=bob,carol"}
    assert "finalizers" not in target["metadata"]  # nothing of kopf's on a watched object
    assert digest(target) == approval["spec"]["toDigest"]  # the annotation changes no digest
    assert k8s.condition(NAME, "Applied")["reason"] == "TargetReached"
    assert k8s.event_reasons(NAME)[-1] == "Applied"
    assert b'changegate_changeapprovals{phase="Applied"} 1.0' in ctx.metrics.exposition()
    assert b'changegate_approval_wait_seconds_count 1.0' in ctx.metrics.exposition()


async def test_watched_objects_never_get_kopf_annotations(k8s, operator):
    live = await k8s.setup()
    cm = await k8s.configmap(NS, "settings", {"a": "1"})
    approval, _ = update_approval(live)
    async with operator():
        await k8s.patch(f"/api/v1/namespaces/{NS}/configmaps/settings", {"data": {"a": "2"}})
        await k8s.patch(f"/apis/apps/v1/namespaces/{NS}/deployments/checkout",
                        {"metadata": {"labels": {"team": "pay"}}})
        await k8s.create_approval(approval)  # its target is watched and has an approval
        await eventually(lambda: k8s.phase(NAME) == "Pending")
    # Leaving the block waited until the operator wrote nothing for a while.
    for kind, name in ((CONFIGMAPS, "settings"), (DEPLOYMENTS, "checkout")):
        meta = k8s.kube.obj(kind, NS, name)["metadata"]
        assert not meta.get("annotations") and not meta.get("finalizers"), meta
    assert digest(k8s.kube.obj(CONFIGMAPS, NS, "settings")) != digest(cm)  # it did change


async def test_a_copy_of_a_used_statement_is_rejected(k8s, operator):
    live = await k8s.setup()
    approval, manifest = update_approval(live)
    approval = sign(approval, "bob", "carol")
    async with operator():
        await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase(NAME) == "Approved")
        await k8s.apply_deployment(manifest)
        await eventually(lambda: k8s.phase(NAME) == "Applied")
        copy = {**approval, "metadata": {"name": "chg-1234-again", "namespace": NS}}
        await k8s.create_approval(copy)
        await eventually(lambda: k8s.phase("chg-1234-again") == "Rejected")
    assert k8s.condition("chg-1234-again", "Approved")["reason"] == "ApprovalUsed"
    assert f"used by {NS}/{NAME}" in k8s.condition("chg-1234-again", "Approved")["message"]
    assert k8s.phase(NAME) == "Applied"
