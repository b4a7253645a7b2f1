"""decide() on the shared fixtures and on every attack SPEC §4 and §5 close."""

from __future__ import annotations

import base64
import copy
import json
from datetime import timedelta

import pytest

from changegate.core.compose import signed
from changegate.core.decision import Context, decide
from changegate.core.dsse import generate
from tests.support import FIXTURE_VERDICTS, NOW, approval_for, fixture, request_of, sign, snapshot

VERDICTS = FIXTURE_VERDICTS


def run(review, *objects, policy="", now=NOW, ledger=None, trust=None):
    return decide(request_of(review), snapshot(*objects, policy=policy, ledger=ledger,
                                               trust=trust), now, Context())


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_each_fixture_gets_the_verdict_its_readme_gives(name):
    decision = run(fixture(name))
    assert decision.allowed is VERDICTS[name], decision.message


def test_dry_run_is_admitted_with_would_deny_warnings_carrying_the_digests():
    decision = run(fixture("deployment-update-dryrun"))
    assert decision.allowed and decision.outcome == "warned"
    assert decision.warnings[0].startswith("changegate: would DENY:")
    assert any(decision.from_digest in w for w in decision.warnings)
    assert any(decision.to_digest in w for w in decision.warnings)
    assert all(len(w) < 256 for w in decision.warnings)


def test_break_glass_by_a_break_glass_group_is_admitted_loudly():
    decision = run(fixture("deployment-break-glass"), policy="breakGlassGroups: [sre-oncall]")
    assert decision.allowed and decision.code == "break_glass" and decision.break_glass
    assert any("BREAK-GLASS" in w for w in decision.warnings)


def test_break_glass_annotation_left_in_place_grants_nothing():
    review = fixture("deployment-break-glass")
    ann = review["request"]["object"]["metadata"]["annotations"]["changegate.io/break-glass"]
    review["request"]["oldObject"]["metadata"].setdefault("annotations", {})[
        "changegate.io/break-glass"] = ann
    decision = run(review, policy="breakGlassGroups: [sre-oncall]")
    assert not decision.allowed and decision.code == "no_approval"


@pytest.mark.parametrize("name", ["deployment-create", "configmap-create"])
def test_create_is_allowed_when_the_policy_drops_it_from_the_gate(name):
    assert run(fixture(name), policy="gatedOperations: [UPDATE, DELETE]").allowed


def test_denial_message_is_actionable_and_ends_with_the_machine_line():
    decision = run(fixture("deployment-update"))
    assert decision.code == "no_approval"
    lines = decision.message.splitlines()
    assert lines[-1] == (f"changegate: op=UPDATE from={decision.from_digest} "
                         f"to={decision.to_digest} approvals=0/2 record=none")
    assert any(line.strip().startswith("next: changegate request") for line in lines)


# --- approvals that admit ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["deployment-update", "deployment-create", "deployment-delete",
                                  "configmap-update", "configmap-create", "configmap-delete",
                                  "deployment-update-replicas", "deployment-update-by-gitops"])
def test_two_distinct_trusted_approvers_admit_exactly_that_change(name):
    review = fixture(name)
    approval = sign(approval_for(review), "bob", "carol")
    decision = run(review, approval)
    assert decision.allowed and decision.code == "approved", decision.message
    assert decision.approvers == ("bob", "carol")
    assert decision.audit["change-record"] == "CHG-1234"


def test_ecdsa_p256_approver_counts():
    review = fixture("deployment-update")
    assert run(review, sign(approval_for(review), "bob", "erin")).allowed


def test_namespace_annotation_raises_required_approvals():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "payments", "labels": {"tier": "tier-1"},
        "annotations": {"changegate.io/required-approvals": "3"}}}
    decision = run(review, approval, ns)
    assert not decision.allowed and decision.code == "approvals_insufficient"
    assert "approvals=2/3" in decision.message


def test_namespace_annotation_cannot_lower_required_approvals():
    review = fixture("deployment-update")
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "payments", "labels": {"tier": "tier-1"},
        "annotations": {"changegate.io/required-approvals": "1"}}}
    decision = run(review, sign(approval_for(review), "bob"), ns)
    assert not decision.allowed and decision.code == "approvals_insufficient"


# --- the adversarial matrix: each attack fails with its own reason ---------------------------

def forged(approval):
    """A signature that claims bob's keyid but is made by another key."""
    out = sign(approval, "bob")
    other = signed(approval, generate())
    out["spec"]["signatures"][0]["sig"] = other["spec"]["signatures"][0]["sig"]
    return sign(out, "carol")


def untrusted(approval):
    return sign(signed(approval, generate()), "carol")


def tamper_statement(approval, mutate):
    """Re-encode the statement after ``mutate(dict)``, then sign what was produced."""
    doc = json.loads(base64.b64decode(approval["spec"]["statement"]))
    mutate(doc)
    out = copy.deepcopy(approval)
    out["spec"]["statement"] = base64.b64encode(json.dumps(doc).encode()).decode()
    return sign(out, "bob", "carol")


def raw_statement(approval, raw: bytes):
    out = copy.deepcopy(approval)
    out["spec"]["statement"] = base64.b64encode(raw).decode()
    return sign(out, "bob", "carol")


def other_review():
    review = fixture("deployment-update")
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "registry.example/checkout:6.6.6")
    return review


ATTACKS = {
    "forged signature": (lambda a: forged(a), "signature_invalid"),
    "valid signature by an untrusted key": (lambda a: untrusted(a), "key_untrusted"),
    "key trusted for another namespace": (lambda a: sign(a, "bob", "frank"),
                                          "approver_wrong_namespace"),
    "the same approver twice (two keys)": (lambda a: sign(a, "dave", "dave2"),
                                           "approver_duplicate"),
    "the same key twice": (lambda a: sign(a, "bob", "bob"), "approver_duplicate"),
    "requester approving own change": (lambda a: sign(approval_for(
        fixture("deployment-update"), requested_by="bob"), "bob", "carol"), "self_approval"),
    "expired": (lambda a: sign(approval_for(fixture("deployment-update"),
                                            issued=NOW - timedelta(hours=5)), "bob", "carol"),
                "expired"),
    "issued in the future": (lambda a: sign(approval_for(fixture("deployment-update"),
                                                         issued=NOW + timedelta(minutes=5)),
                                            "bob", "carol"), "not_yet_valid"),
    "expiry beyond the maximum lifetime": (lambda a: sign(approval_for(
        fixture("deployment-update"), lifetime=timedelta(hours=30)), "bob", "carol"),
        "lifetime_exceeded"),
    "wrong target name": (lambda a: tamper_statement(a, lambda d: d["predicate"]["target"]
                                                     .update(name="other")),
                          "statement_invalid"),  # subject no longer matches the target
    "wrong cluster": (lambda a: sign(approval_for(fixture("deployment-update"),
                                                  cluster="prod-us-9"), "bob", "carol"),
                      "cluster_mismatch"),
    "bad change-record id": (lambda a: sign(approval_for(fixture("deployment-update"),
                                                         record="chg 1234"), "bob", "carol"),
                             "change_record_invalid"),
    "wrong predicateType": (lambda a: tamper_statement(a, lambda d: d.update(
        predicateType="https://slsa.dev/provenance/v1")), "statement_invalid"),
    "wrong _type": (lambda a: tamper_statement(a, lambda d: d.update(
        _type="https://in-toto.io/Statement/v0.1")), "statement_invalid"),
    "unknown field in the predicate": (lambda a: tamper_statement(a, lambda d: d["predicate"]
                                                                  .update(extra=1)),
                                       "statement_invalid"),
    "two subjects": (lambda a: tamper_statement(a, lambda d: d["subject"].append(
        d["subject"][0])), "statement_invalid"),
    "non-JSON payload": (lambda a: raw_statement(a, b"\x00not json"), "statement_invalid"),
    "duplicated key": (lambda a: raw_statement(a, base64.b64decode(a["spec"]["statement"])
                                               .replace(b'{"_type"', b'{"_type":"x","_type"', 1)),
                       "statement_invalid"),
    "truncated signature": (lambda a: _mutate_sig(sign(a, "bob", "carol"), lambda s: s[:40]),
                            "signature_invalid"),
    "non-base64 signature": (lambda a: _mutate_sig(sign(a, "bob", "carol"),
                                                   lambda s: "!!" + s[2:]), "signature_invalid"),
    "CR fields disagreeing with the signed statement": (
        lambda a: _mutate_spec(sign(a, "bob", "carol"), requestedBy="mallory"),
        "spec_statement_mismatch"),
    "manifest other than the signed digest": (
        lambda a: _mutate_spec(sign(a, "bob", "carol"), manifest=other_review()["request"]
                               ["object"]), "manifest_mismatch"),
}


def _mutate_sig(approval, change):
    approval["spec"]["signatures"][0]["sig"] = change(approval["spec"]["signatures"][0]["sig"])
    return approval


def _mutate_spec(approval, **fields):
    approval["spec"].update(fields)
    return approval


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_denied_with_its_own_reason(attack):
    make, code = ATTACKS[attack]
    review = fixture("deployment-update")
    decision = run(review, make(approval_for(review)))
    assert not decision.allowed
    assert code in {r.code for r in decision.reasons}, (attack, decision.message)


def test_wrong_payload_type_does_not_verify():
    from changegate.core.dsse import b64encode, pae

    review = fixture("deployment-update")
    approval = approval_for(review)
    payload = base64.b64decode(approval["spec"]["statement"])
    from tests.support import key
    approval["spec"]["signatures"] = [
        {"keyid": key(n).public.keyid,
         "sig": b64encode(key(n).sign(pae("application/json", payload)))}
        for n in ("bob", "carol")]
    decision = run(review, approval)
    assert not decision.allowed and decision.code == "approvals_insufficient"
    assert "signature_invalid" in {r.code for r in decision.reasons}


def test_the_applying_user_cannot_count_as_an_approver():
    review = fixture("deployment-update")
    review["request"]["userInfo"]["username"] = "bob"
    decision = run(review, sign(approval_for(review), "bob", "carol"))
    assert not decision.allowed
    assert "applier_approval" in {r.code for r in decision.reasons}


def test_approval_for_a_to_b_does_not_admit_c_to_b():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    moved = copy.deepcopy(review)
    moved["request"]["oldObject"]["spec"]["replicas"] = 7  # the live object is C, not A
    decision = run(moved, approval)
    assert not decision.allowed and decision.code == "digest_mismatch"


def test_approval_for_b_does_not_admit_another_change():
    approval = sign(approval_for(fixture("deployment-update")), "bob", "carol")
    decision = run(other_review(), approval)
    assert not decision.allowed and decision.code == "digest_mismatch"


def test_approval_copied_into_another_namespace_is_refused():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "erin", "dave")  # both may sign in shipping
    approval["metadata"]["namespace"] = "shipping"
    review["request"]["namespace"] = "shipping"
    for key_ in ("object", "oldObject"):
        review["request"][key_]["metadata"]["namespace"] = "shipping"
    decision = run(review, approval)
    assert not decision.allowed
    assert {"spec_statement_mismatch", "target_mismatch"} & {r.code for r in decision.reasons}


def test_wrong_operation_is_refused():
    review = fixture("deployment-delete")
    approval = sign(approval_for(review), "bob", "carol")
    update = fixture("deployment-update")
    decision = run(update, approval)
    assert not decision.allowed and decision.code in ("operation_mismatch", "digest_mismatch")


def test_replayed_approval_whose_nonce_is_in_the_ledger_is_refused():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    nonce = json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]
    ledger = [{"kind": "ConfigMap", "metadata": {"name": f"changegate-ledger-{nonce[0]}"},
               "data": {nonce: "{}"}}]
    decision = run(review, approval, ledger=ledger)
    assert not decision.allowed and decision.code == "approval_used"


def test_applied_phase_is_not_used_again():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    approval["status"] = {"phase": "Applied"}
    assert run(review, approval).code == "approval_used"


def test_target_uid_must_be_the_live_object():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    review["request"]["oldObject"]["metadata"]["uid"] = "recreated-uid"
    decision = run(review, approval)
    assert not decision.allowed and decision.code == "target_mismatch"


def test_atomic_record_holds_the_release_until_every_part_is_signed():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    sibling = sign(approval_for(fixture("configmap-update"), name="chg-1234-cm"), "bob")
    decision = run(review, approval, sibling)
    assert not decision.allowed and decision.code == "record_incomplete"
    assert run(review, approval, sibling, policy="atomicRecords: false").allowed
    assert run(review, approval, sign(sibling, "carol")).allowed


def test_invalid_trust_store_denies_every_gated_change_with_configuration_invalid():
    review = fixture("deployment-update")
    decision = run(review, trust="approvers: [{name: bob, keys: [not-a-key]}]")
    assert not decision.allowed and decision.code == "config_invalid"
    assert "configuration invalid" in decision.message


def test_integer_beyond_2_53_cannot_be_approved():
    review = fixture("configmap-update")
    review["request"]["object"]["metadata"]["labels"] = {"x": "y"}
    review["request"]["object"]["spec"] = {"n": 2**60}  # ConfigMaps ignore spec; use a Deployment
    dep = fixture("deployment-update")
    dep["request"]["object"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2**60
    decision = run(dep)
    assert not decision.allowed and decision.code == "not_canonical"
    assert "2^53" in decision.message


def test_warn_mode_admits_with_warnings():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "payments", "labels": {"tier": "tier-1"},
        "annotations": {"changegate.io/enforcement": "warn"}}}
    decision = run(fixture("deployment-update"), ns)
    assert decision.allowed and decision.outcome == "warned"
    assert decision.warnings[0].startswith("changegate: would DENY")


def test_unreadable_enforcement_annotation_means_deny():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "payments", "labels": {"tier": "tier-1"},
        "annotations": {"changegate.io/enforcement": "wran"}}}
    assert not run(fixture("deployment-update"), ns).allowed


def test_namespace_without_the_tier_label_is_not_gated():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}}
    assert run(fixture("deployment-update"), ns).code == "not_gated"


def test_restart_is_denied_with_the_restart_path_and_allowed_for_restart_writers():
    review = fixture("deployment-rollout-restart")
    decision = run(review)
    assert decision.code == "restart_unapproved" and "--restart" in decision.message
    user = review["request"]["userInfo"]["username"]
    assert run(review, policy=f"restartWriters: {{users: [{user}]}}").code == "restart"


def test_scale_down_of_autoscaled_workload_through_spec_is_denied():
    review = fixture("deployment-update-replicas")
    decision = run(review, policy="autoscaled: [{namespace: payments, name: checkout}]")
    assert not decision.allowed and decision.code == "scale_down"


def test_require_image_digests_refuses_tags():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    decision = run(review, approval, policy="requireImageDigests: true")
    assert not decision.allowed and decision.code == "image_not_pinned"
    assert any("not pinned" in w for w in run(review, approval).warnings)


def test_exempt_writer_needs_identity_and_name():
    review = fixture("configmap-update")
    user = review["request"]["userInfo"]["username"]
    name = review["request"]["name"]
    policy = (f"exemptWriters: [{{users: [{user}], kinds: [ConfigMap], names: [{name}]}}]")
    assert run(review, policy=policy).code == "exempt_writer"
    other = (f"exemptWriters: [{{users: [{user}], kinds: [ConfigMap], names: [other-*]}}]")
    assert not run(review, policy=other).allowed


def test_verification_is_memoized_and_a_removed_key_stops_counting_at_once():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    ctx = Context()
    req = request_of(review)
    assert decide(req, snapshot(approval), NOW, ctx).allowed
    assert decide(req, snapshot(approval), NOW, ctx).allowed
    assert ctx.memo.hits >= 1
    from tests.support import key, trust_yaml
    without_carol = trust_yaml([{"name": "bob", "keys": [key("bob").public.pem()]}])
    decision = decide(req, snapshot(approval, trust=without_carol), NOW, ctx)
    assert not decision.allowed


def test_applier_is_excluded_but_two_other_approvers_still_admit():
    review = fixture("deployment-update")
    review["request"]["userInfo"]["username"] = "bob"
    decision = run(review, sign(approval_for(review), "bob", "carol", "erin"))
    assert decision.allowed and decision.approvers == ("carol", "erin")


def test_requester_signature_does_not_count_but_does_not_spoil_the_approval():
    review = fixture("deployment-update")
    approval = approval_for(review, requested_by="bob")
    assert run(review, sign(approval, "bob", "carol")).code == "self_approval"
    assert run(review, sign(approval, "bob", "carol", "erin")).allowed


def test_rule1_a_forged_signature_spoils_nothing_when_others_suffice():
    """SPEC §4 rule 1: a signature that does not count admits nothing and spoils nothing;
    it is still counted as `invalid`."""
    review = fixture("deployment-update")
    decision = run(review, sign(forged(approval_for(review)), "erin"))
    assert decision.allowed and decision.approvers == ("carol", "erin"), decision.message
    assert decision.signature_results.count("invalid") == 1


def test_an_approval_nobody_signed_yet_is_named_in_the_denial():
    review = fixture("deployment-update")
    decision = run(review, approval_for(review))
    assert not decision.allowed and decision.code == "approvals_insufficient"
    assert decision.message.splitlines()[-1].endswith("approvals=0/2 record=CHG-1234")
    assert "changegate approve chg-1234 -n payments" in decision.message


def test_an_unsigned_approval_for_another_change_says_so():
    decision = run(other_review(), approval_for(fixture("deployment-update")))
    assert not decision.allowed and decision.code == "digest_mismatch"
