"""SPEC §6a, rule by rule: AI-assisted and automation changes need a senior signature;
automation identities never approve and never break glass; the declaration policy."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from changegate.core.decision import Context, decide
from changegate.core.errors import StatementError
from changegate.core.statement import parse_statement
from changegate.core.trust import load_trust_store
from tests.support import NOW, approval_for, fixture, key, request_of, sign, snapshot

GITOPS = "system:serviceaccount:argocd:argocd-application-controller"
BOT = "coding-agent"


def trust(*, automation_entry: bool = False) -> str:
    """bob and carol approve in payments (not senior); sam is senior in payments, tess
    senior everywhere; the bot, when listed, is an automation identity with a key."""
    entries = [
        {"name": "bob", "namespaces": ["payments"], "keys": [key("bob").public.pem()]},
        {"name": "carol", "namespaces": ["payments"], "keys": [key("carol").public.pem()]},
        {"name": "sam", "namespaces": ["payments"], "senior": True,
         "keys": [key("sam").public.pem()]},
        {"name": "tess", "namespaces": ["*"], "senior": True, "keys": [key("tess").public.pem()]},
        {"name": "alice", "role": "requester", "keys": [key("alice").public.pem()]},
    ]
    if automation_entry:
        entries.append({"name": BOT, "namespaces": ["*"], "senior": True,
                        "keys": [key(BOT).public.pem()]})
    return yaml.safe_dump({"approvers": entries})


POLICY = f"automation: {{users: [{BOT}, {GITOPS}], groups: [ci-bots]}}\n"


def run(review, *objects, policy=POLICY, trust_text=None):
    snap = snapshot(*objects, policy=policy, trust=trust_text or trust())
    return decide(request_of(review), snap, NOW, Context())


def as_user(review, user, groups=("system:authenticated",)):
    review["request"]["userInfo"] = {"username": user, "uid": "u1", "groups": list(groups)}
    return review


# --- the statement field ---------------------------------------------------------------

def test_assistance_is_signed_and_must_be_none_or_ai():
    review = fixture("deployment-update")
    approval = approval_for(review, assistance="ai")
    raw = base64.b64decode(approval["spec"]["statement"])
    assert parse_statement(raw).predicate.assistance == "ai"
    assert approval["spec"]["assistance"] == "ai"
    doc = json.loads(raw)
    for bad in ("AI", None, True, ""):
        doc["predicate"]["assistance"] = bad
        with pytest.raises(StatementError):
            parse_statement(json.dumps(doc).encode())


def test_assistance_in_the_spec_must_equal_the_statement():
    review = fixture("deployment-update")
    approval = sign(approval_for(review, assistance="ai"), "sam", "carol")
    approval["spec"]["assistance"] = "none"
    decision = run(review, approval)
    assert not decision.allowed and decision.code == "spec_statement_mismatch"


# --- requireAssistanceDeclaration ------------------------------------------------------

def test_declaration_missing_is_denied_when_the_policy_requires_it():
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    policy = POLICY + "requireAssistanceDeclaration: true\n"
    decision = run(review, approval, policy=policy)
    assert not decision.allowed and decision.code == "statement_invalid"
    assert "--assisted" in decision.detail
    declared = sign(approval_for(review, assistance="none"), "bob", "carol")
    assert run(review, declared, policy=policy).allowed


def test_declaration_missing_is_refused_at_the_door():
    review = fixture("deployment-update")
    approval = approval_for(review)
    create = {"request": {
        "uid": "x", "kind": {"group": "changegate.io", "version": "v1alpha1",
                             "kind": "ChangeApproval"},
        "resource": {"group": "changegate.io", "version": "v1alpha1",
                     "resource": "changeapprovals"},
        "name": approval["metadata"]["name"], "namespace": "payments", "operation": "CREATE",
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": approval, "oldObject": None, "dryRun": False},
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    policy = POLICY + "requireAssistanceDeclaration: true\n"
    decision = run(create, policy=policy)
    assert not decision.allowed and decision.code == "statement_invalid"
    assert run(create).allowed  # without the policy key nobody is asked to declare


# --- the senior signature --------------------------------------------------------------

def test_ai_with_no_senior_is_denied_naming_who_could_sign():
    review = fixture("deployment-update")
    approval = sign(approval_for(review, assistance="ai"), "bob", "carol")
    decision = run(review, approval)
    assert not decision.allowed and decision.code == "senior_approval_required"
    assert "1 senior signature missing" in decision.detail
    assert "sam, tess" in decision.detail
    assert "senior approver" in decision.message  # the next: line


def test_ai_with_one_senior_among_the_two_is_admitted():
    review = fixture("deployment-update")
    decision = run(review, sign(approval_for(review, assistance="ai"), "bob", "sam"))
    assert decision.allowed and decision.code == "approved", decision.message


def test_ai_needs_senior_approvals_seniors_but_the_total_stays_required_approvals():
    review = fixture("deployment-update")
    policy = POLICY + "seniorApprovals: 2\n"
    one = run(review, sign(approval_for(review, assistance="ai"), "bob", "sam"), policy=policy)
    assert one.code == "senior_approval_required" and "1 senior signature missing" in one.detail
    two = run(review, sign(approval_for(review, assistance="ai"), "sam", "tess"), policy=policy)
    assert two.allowed


def test_no_assistance_declared_none_needs_no_senior():
    review = fixture("deployment-update")
    assert run(review, sign(approval_for(review, assistance="none"), "bob", "carol")).allowed
    assert run(review, sign(approval_for(review), "bob", "carol")).allowed


def test_automation_applier_by_group_needs_a_senior():
    review = as_user(fixture("deployment-update"), "deploy-pipeline",
                     ("ci-bots", "system:authenticated"))
    approval = sign(approval_for(review), "bob", "carol")
    decision = run(review, approval)
    assert decision.code == "senior_approval_required"
    assert "applied by automation identity deploy-pipeline" in decision.detail
    assert run(review, sign(approval_for(review), "bob", "tess")).allowed


def test_automation_applier_by_user_the_gitops_controller_needs_a_senior():
    review = fixture("deployment-update-by-gitops")
    decision = run(review, sign(approval_for(review), "bob", "carol"))
    assert decision.code == "senior_approval_required"
    assert run(review, sign(approval_for(review), "carol", "sam")).allowed


def test_automation_requester_needs_a_senior():
    review = as_user(fixture("deployment-update"), "alice")
    approval = sign(approval_for(review, requested_by=BOT), "bob", "carol")
    decision = run(review, approval)
    assert decision.code == "senior_approval_required"
    assert f"requested by automation identity {BOT}" in decision.detail
    assert run(review, sign(approval_for(review, requested_by=BOT), "bob", "sam")).allowed


def test_automation_identity_listed_in_the_trust_store_never_counts():
    review = fixture("deployment-update")
    text = trust(automation_entry=True)
    # The bot is listed (even as senior): its signature is ignored, the humans' still count.
    decision = run(review, sign(approval_for(review), "bob", BOT), trust_text=text)
    assert not decision.allowed and decision.code == "automation_approver"
    assert "1/2 approvals" in decision.detail
    assert any(f"{BOT} is an automation identity" in w for w in decision.warnings)
    admitted = run(review, sign(approval_for(review, assistance="ai"), "bob", BOT, "sam"),
                   trust_text=text)
    assert admitted.allowed and admitted.approvers == ("bob", "sam")
    store = load_trust_store(text)
    eligible = store.eligible_approvers("payments", allow_service_accounts=False,
                                        automation=frozenset({BOT, GITOPS}))
    assert BOT not in eligible and {"bob", "sam"} <= eligible


def test_break_glass_by_an_automation_identity_is_refused():
    review = as_user(fixture("deployment-break-glass"), "deploy-pipeline",
                     ("sre-oncall", "ci-bots", "system:authenticated"))
    policy = POLICY + "breakGlassGroups: [sre-oncall]\n"
    decision = run(review, policy=policy)
    assert not decision.allowed and not decision.break_glass
    assert decision.code == "no_approval"
    assert any("break-glass is not for automation" in w for w in decision.warnings)
    person = run(fixture("deployment-break-glass"), policy=policy)
    assert person.allowed and person.break_glass  # the same group, a person: admitted


def test_a_senior_short_release_holds_its_siblings():
    """Atomic records: a sibling short of its senior signature is not complete."""
    review = fixture("deployment-update")
    good = sign(approval_for(review, assistance="ai"), "bob", "sam")
    other = fixture("configmap-update")
    short = sign(approval_for(other, assistance="ai", name="chg-1234-cm"), "bob", "carol")
    decision = run(review, good, short)
    assert decision.code == "record_incomplete" and "senior" in decision.detail


# --- the config guard knows what loosens §6a -------------------------------------------

@pytest.mark.parametrize("old,new,loosened", [
    ("automation: {users: [bot]}", "automation: {users: []}", True),
    ("automation: {groups: [ci-bots]}", "automation: {groups: [ci-bots, agents]}", False),
    ("seniorApprovals: 2", "seniorApprovals: 1", True),
    ("seniorApprovals: 1", "seniorApprovals: 2", False),
    ("requireAssistanceDeclaration: true", "requireAssistanceDeclaration: false", True),
    ("requireAssistanceDeclaration: false", "requireAssistanceDeclaration: true", False),
])
def test_policy_changes_to_the_senior_rules_are_classified(old, new, loosened):
    from tests.unit.test_guards import ADMIN, cfg_review

    review = cfg_review("changegate-policy", "policy.yaml", old + "\n" + ADMIN,
                        new + "\n" + ADMIN, user="pat", groups=["platform-admins"])
    decision = run(review, policy=ADMIN)
    assert decision.allowed and decision.config_change == ("policy", loosened)


def test_making_an_approver_senior_is_loosening():
    from tests.unit.test_guards import ADMIN, cfg_review

    before = yaml.safe_load(trust())
    after = yaml.safe_load(trust())
    after["approvers"][0]["senior"] = True  # bob
    review = cfg_review("changegate-trust", "approvers.yaml", yaml.safe_dump(before),
                        yaml.safe_dump(after), user="pat", groups=["platform-admins"])
    assert run(review, policy=ADMIN).config_change == ("trust", True)
    back = cfg_review("changegate-trust", "approvers.yaml", yaml.safe_dump(after),
                      yaml.safe_dump(before), user="pat", groups=["platform-admins"])
    assert run(back, policy=ADMIN).config_change == ("trust", False)


def test_eligible_approvers_metric_leaves_automation_identities_out():
    from changegate.webhook import metrics

    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "payments", "labels": {"tier": "tier-1"}}}
    text = trust(automation_entry=True)  # bob, carol, sam, tess and the bot approve here
    for policy, expected in ((POLICY, 4), ("", 5)):
        metrics.observe_snapshot(snapshot(namespace, policy=policy, trust=text), synced=True)
        assert metrics.ELIGIBLE_APPROVERS.labels("payments")._value.get() == expected
