"""status.assess and friends: what a ChangeApproval's status says, as pure functions."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta

import pytest

from changegate.core.approval import verify_approval
from changegate.core.compose import change_approval, signed
from changegate.core.policy import load_policy
from changegate.core.trust import load_trust_store
from changegate.operator.ledger import LedgerEntry
from changegate.operator.status import Facts, assess, events, status_body, unchanged
from tests.operator.conftest import START, deployment, sign, update_approval
from tests.support import key, trust_yaml

TRUST = load_trust_store(trust_yaml())
POLICY = load_policy("")
ELIGIBLE = frozenset(TRUST.eligible_approvers("payments", allow_service_accounts=False))


def live():
    obj = deployment()
    obj["metadata"]["uid"] = "uid-checkout"
    return obj


def facts(approval, *, now=START, ledger=None, previous="", policy=POLICY, trust=TRUST,
          required=2):
    spec = approval["spec"]
    verified = None if trust is None or policy is None else verify_approval(
        "payments", spec, trust, allow_service_accounts=False)
    return Facts(namespace="payments", name=approval["metadata"]["name"], uid="uid-ca",
                 spec=spec, verified=verified, policy=policy,
                 config_error="" if verified else "trust store missing", required=required,
                 eligible=ELIGIBLE, autoscaled=False, ledger=ledger, now=now,
                 previous_phase=previous)


def approval(**kwargs):
    return update_approval(live(), **kwargs)[0]


def test_signed_by_two_eligible_approvers_is_approved():
    a = assess(facts(sign(approval(), "bob", "erin")))
    assert (a.phase, a.approvers, a.problems) == ("Approved", ("bob", "erin"), ())
    assert a.condition("Verified").message == "2 of 2 signatures verify (bob, erin)"
    assert a.condition("Applied").reason == "WaitingForTarget"


def test_two_keys_of_one_person_count_once_and_the_message_says_so():
    a = assess(facts(sign(approval(), "dave", "dave2")))
    assert a.phase == "Pending"
    message = a.condition("Approved").message
    assert message.startswith("1/2 approvals (dave); not counted: dave signed twice")
    assert "needs 1 more from: bob, carol, erin" in message


def test_the_requester_cannot_approve_their_own_change():
    own = approval()
    own = change_approval(**{**_fields(own), "requested_by": "bob"})
    a = assess(facts(sign(own, "bob", "carol")))
    assert (a.phase, a.approvers) == ("Pending", ("carol",))
    assert "bob requested this change and cannot approve it" in a.condition("Approved").message
    assert "bob" not in a.missing


def _fields(ca):
    spec = ca["spec"]
    return dict(namespace="payments", name=ca["metadata"]["name"], cluster="",
                target=spec["target"], operation=spec["operation"],
                from_digest=spec["fromDigest"], to_digest=spec["toDigest"],
                record_id=spec["changeRecord"]["id"], record_url=None,
                requested_by=spec["requestedBy"], issued_at=START - timedelta(minutes=5),
                expires_at=START + timedelta(hours=3), manifest=spec["manifest"],
                nonce=str(uuid.uuid4()))


def test_an_approver_of_another_namespace_does_not_verify_here():
    a = assess(facts(sign(approval(), "bob", "frank")))
    assert a.phase == "Pending"
    assert a.condition("Verified").reason == "ApproverWrongNamespace"
    assert "frank may not approve in namespace payments" in a.condition("Verified").message


def test_an_untrusted_key_names_the_signature_index():
    ca = approval()
    ca = signed(sign(ca, "bob"), key("mallory"))
    a = assess(facts(ca))
    verified = a.condition("Verified")
    assert (verified.status, verified.reason) == ("False", "KeyUntrusted")
    assert "signatures[1] is by no key in the trust store" in verified.message


@pytest.mark.parametrize(("change", "code"), [
    (lambda ca: ca["spec"].update(toDigest="sha256:" + "0" * 64), "SpecStatementMismatch"),
    (lambda ca: ca["spec"]["manifest"]["spec"].update(replicas=9), "ManifestMismatch"),
    (lambda ca: ca["spec"].update(statement="bm90IGpzb24="), "StatementInvalid"),
])
def test_an_approval_no_signature_can_save_is_rejected(change, code):
    ca = sign(approval(), "bob", "carol")
    change(ca)
    a = assess(facts(ca))
    assert a.phase == "Rejected"
    assert a.condition("Approved").reason == code


def test_a_change_record_the_policy_refuses_is_rejected():
    a = assess(facts(sign(approval(record="chg-1"), "bob", "carol")))
    assert (a.phase, a.condition("Approved").reason) == ("Rejected", "ChangeRecordInvalid")


def test_an_approval_for_another_cluster_is_rejected():
    policy = load_policy("clusterName: prod-eu-1\n")
    a = assess(facts(sign(approval(), "bob", "carol"), policy=policy))
    assert (a.phase, a.condition("Approved").reason) == ("Rejected", "ClusterMismatch")


def test_an_approval_issued_in_the_future_waits():
    a = assess(facts(sign(approval(now=START + timedelta(hours=1)), "bob", "carol")))
    assert (a.phase, a.condition("Approved").reason) == ("Pending", "NotYetValid")


def test_expiry_wins_over_everything_but_a_recorded_use():
    ca = sign(approval(lifetime=timedelta(hours=1)), "bob", "carol")
    later = START + timedelta(hours=1)
    a = assess(facts(ca, now=later))
    assert (a.phase, a.condition("Expired").status) == ("Expired", "True")
    used = LedgerEntry("payments/chg-1234", "uid-ca", "k8s://x", ca["spec"]["expiresAt"])
    assert assess(facts(ca, now=later, ledger=used)).phase == "Applied"


def test_a_nonce_used_by_another_approval_rejects_this_one():
    ca = sign(approval(), "bob", "carol")
    other = LedgerEntry("payments/first", "uid-first", "k8s://x", ca["spec"]["expiresAt"])
    a = assess(facts(ca, ledger=other))
    assert a.phase == "Rejected"
    assert "used by payments/first" in a.condition("Approved").message
    same_name_new_uid = LedgerEntry("payments/chg-1234", "uid-older", "k8s://x", "")
    assert assess(facts(ca, ledger=same_name_new_uid)).phase == "Rejected"


def test_a_nonce_the_ledger_cannot_hold_is_never_approved():
    """uuid.UUID() accepts "{...}", which no ledger key can hold; the core now refuses the
    statement outright, so such an approval can never be Approved (nor admitted)."""
    import base64
    import json
    ca = approval()
    doc = json.loads(base64.b64decode(ca["spec"]["statement"]))
    doc["predicate"]["nonce"] = "{" + str(uuid.uuid4()) + "}"
    ca["spec"]["statement"] = base64.b64encode(json.dumps(doc).encode()).decode()
    a = assess(facts(sign(ca, "bob", "carol")))
    assert a.phase != "Approved"
    assert "nonce" in a.condition("Verified").message


def test_without_a_usable_trust_store_the_phase_stays_and_conditions_say_why():
    a = assess(facts(sign(approval(), "bob", "carol"), trust=None, previous="Approved"))
    assert a.phase == "Approved"
    assert {c.status for c in a.conditions[:2]} == {"Unknown"}
    assert a.condition("Verified").message == "trust store missing"


def test_conditions_keep_their_transition_time_until_their_status_changes():
    ca = approval()
    first = status_body({}, assess(facts(ca)), START, 1)
    later = START + timedelta(minutes=5)
    again = status_body(first, assess(facts(ca, now=later)), later, 1)
    assert unchanged(first, again)
    signed_ca = sign(ca, "bob", "carol")
    approved = status_body(again, assess(facts(signed_ca, now=later)), later, 1)
    times = {c["type"]: c["lastTransitionTime"] for c in approved["conditions"]}
    assert times == {"Verified": "2026-11-23T10:05:00Z", "Approved": "2026-11-23T10:05:00Z",
                     "Expired": "2026-11-23T10:00:00Z", "Applied": "2026-11-23T10:00:00Z"}


def test_events_tell_each_step_once():
    ca = approval()
    a0 = assess(facts(ca))
    s0 = status_body({}, a0, START, 1)
    assert [e[1] for e in events({}, s0, a0, "chg-1234", "payments")] == ["Pending"]
    assert events(s0, s0, a0, "chg-1234", "payments") == []
    a1 = assess(facts(sign(ca, "bob")))
    s1 = status_body(s0, a1, START, 1)
    [(kind, reason, message)] = events(s0, s1, a1, "chg-1234", "payments")
    assert (kind, reason) == ("Normal", "Signed")
    assert message.startswith("CHG-1234: UPDATE Deployment checkout signed by bob (1/2)")
    forged = copy.deepcopy(signed(sign(ca, "bob"), key("mallory")))
    forged["spec"]["signatures"][1]["keyid"] = key("carol").public.keyid  # claims carol
    a2 = assess(facts(forged))
    s2 = status_body(s1, a2, START, 1)
    [(kind, reason, message)] = events(s1, s2, a2, "chg-1234", "payments")
    assert (kind, reason) == ("Warning", "SignatureInvalid")
    assert "signatures[1] claims carol's key" in message
