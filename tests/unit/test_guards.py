"""The guards around the gate, each shown as an attack that fails."""

from __future__ import annotations

import copy

import pytest
import yaml

from changegate.core.decision import Context, decide
from changegate.core.review import parse_review
from tests.support import NOW, approval_for, fixture, key, sign, snapshot, trust_yaml


def review(resource, operation, *, obj, old=None, user="alice", groups=(), namespace="payments",
           name="x", group="", kind="X", sub="", dry=False, kind_group=None):
    kind_group = group if kind_group is None else kind_group
    req = {"uid": "u-1", "kind": {"group": kind_group, "version": "v1", "kind": kind},
           "resource": {"group": group, "version": "v1", "resource": resource},
           "name": name, "namespace": namespace, "operation": operation,
           "userInfo": {"username": user, "groups": [*groups, "system:authenticated"]},
           "object": obj, "oldObject": old, "dryRun": dry}
    if sub:
        req["subResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def run(doc, *objects, policy="", trust=None, ledger=None):
    return decide(parse_review(doc), snapshot(*objects, policy=policy, trust=trust,
                                              ledger=ledger), NOW, Context())


# --- namespace guard -----------------------------------------------------------------------

def ns(labels=None, annotations=None):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "payments", "labels": labels if labels is not None
                         else {"tier": "tier-1"}, "annotations": annotations or {}}}


def ns_review(old, new, user="alice", groups=(), op="UPDATE"):
    return review("namespaces", op, obj=new, old=old, user=user, groups=groups, namespace="",
                  name="payments", kind="Namespace")


@pytest.mark.parametrize("new,why", [
    (ns(labels={}), "tierSelector"),
    (ns(annotations={"changegate.io/enforcement": "warn"}), "warn"),
])
def test_loosening_a_tier1_namespace_needs_a_policy_admin(new, why):
    decision = run(ns_review(ns(), new), policy="policyAdminGroups: [platform-admins]")
    assert not decision.allowed and decision.code == "namespace_guard" and why in decision.detail
    assert decision.policy_change is False
    admin = run(ns_review(ns(), new, user="pat", groups=["platform-admins"]),
                policy="policyAdminGroups: [platform-admins]")
    assert admin.allowed and admin.policy_change is True


def test_lowering_required_approvals_annotation_is_loosening():
    old = ns(annotations={"changegate.io/required-approvals": "3"})
    assert run(ns_review(old, ns())).code == "namespace_guard"


def test_tightening_is_allowed_and_not_counted():
    decision = run(ns_review(ns(annotations={"changegate.io/enforcement": "warn"}), ns()))
    assert decision.allowed and decision.policy_change is None


def test_deleting_a_tier1_namespace_is_a_guarded_operation():
    assert run(ns_review(ns(), None, op="DELETE")).code == "namespace_guard"


def test_process_config_admin_group_works_even_with_a_broken_policy():
    from changegate.core.snapshot import ProcessConfig
    from changegate.files import build_snapshot
    snap = build_snapshot(trust_text=trust_yaml(), policy_text="nonsense: [",
                          process=ProcessConfig(policy_admin_groups=frozenset({"root-admins"})))
    doc = ns_review(ns(), ns(labels={}), user="pat", groups=["root-admins"])
    assert decide(parse_review(doc), snap, NOW, Context()).allowed


# --- config guard ----------------------------------------------------------------------------

def cm(name, key_, text):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "changegate"}, "data": {key_: text}}


def cfg_review(name, key_, old_text, new_text, user="alice", groups=()):
    return review("configmaps", "UPDATE", obj=cm(name, key_, new_text),
                  old=cm(name, key_, old_text), user=user, groups=groups, namespace="changegate",
                  name=name, kind="ConfigMap")


ADMIN = "policyAdminGroups: [platform-admins]"


def test_only_policy_admins_may_edit_the_trust_store():
    mallory = trust_yaml([{"name": "mallory", "namespaces": ["*"],
                           "keys": [key("mallory").public.pem()]}])
    decision = run(cfg_review("changegate-trust", "approvers.yaml", trust_yaml(), mallory),
                   policy=ADMIN)
    assert not decision.allowed and decision.code == "config_guard"
    assert decision.config_change == ("trust", True)


def test_adding_an_approver_is_loosening_removing_is_not():
    bigger = yaml.safe_load(trust_yaml())
    bigger["approvers"].append({"name": "zed", "namespaces": ["payments"],
                                "keys": [key("zed").public.pem()]})
    add = run(cfg_review("changegate-trust", "approvers.yaml", trust_yaml(),
                         yaml.safe_dump(bigger), user="pat", groups=["platform-admins"]),
              policy=ADMIN)
    assert add.allowed and add.config_change == ("trust", True)
    remove = run(cfg_review("changegate-trust", "approvers.yaml", yaml.safe_dump(bigger),
                            trust_yaml(), user="pat", groups=["platform-admins"]), policy=ADMIN)
    assert remove.allowed and remove.config_change == ("trust", False)


def test_invalid_trust_store_is_refused_even_for_admins():
    twice = trust_yaml([{"name": "a", "keys": [key("bob").public.pem()]},
                        {"name": "b", "keys": [key("bob").public.pem()]}])
    decision = run(cfg_review("changegate-trust", "approvers.yaml", trust_yaml(), twice,
                              user="pat", groups=["platform-admins"]), policy=ADMIN)
    assert not decision.allowed and "one key must speak for one person" in decision.message
    # A rule's refusal, not the webhook's fault: it must not feed "denying on errors".
    assert (decision.code, decision.outcome) == ("config_guard", "denied")


@pytest.mark.parametrize("old,new,loosened", [
    ("requiredApprovals: 2", "requiredApprovals: 1", True),
    ("requiredApprovals: 2", "requiredApprovals: 3", False),
    ("breakGlassGroups: []", "breakGlassGroups: [everyone]", True),
    ("enforcement: deny", "enforcement: warn", True),
])
def test_policy_changes_are_classified(old, new, loosened):
    decision = run(cfg_review("changegate-policy", "policy.yaml", old + "\n" + ADMIN,
                              new + "\n" + ADMIN, user="pat", groups=["platform-admins"]),
                   policy=ADMIN)
    assert decision.allowed and decision.config_change == ("policy", loosened)


def test_a_policy_typo_is_refused():
    typo = ADMIN + "\nrequiredAprovals: 1"
    decision = run(cfg_review("changegate-policy", "policy.yaml", ADMIN, typo, user="pat",
                              groups=["platform-admins"]), policy=ADMIN)
    assert not decision.allowed and "requiredAprovals" in decision.message


def test_process_configuration_is_guarded_too():
    """changegate-config names the admin and break-glass groups: editing it must be guarded."""
    doc = cfg_review("changegate-config", "config.yaml", "policyAdminGroups: [a]",
                     "policyAdminGroups: [a, everyone]")
    decision = run(doc, policy=ADMIN)
    assert not decision.allowed and decision.code == "config_guard"
    admin = cfg_review("changegate-config", "config.yaml", "x: 1", "x: 2", user="pat",
                       groups=["platform-admins"])
    assert run(admin, policy=ADMIN).config_change == ("process", True)


def test_only_the_operator_writes_the_ledger():
    doc = cfg_review("changegate-ledger-a", "x", "{}", "{}", user="pat", groups=["platform-admins"])
    assert run(doc, policy=ADMIN).code == "config_guard"
    doc = cfg_review("changegate-ledger-a", "x", "{}", "{}",
                     user="system:serviceaccount:changegate:changegate-operator")
    assert run(doc).allowed


# --- scale guard -----------------------------------------------------------------------------

def scale(old, new, user="alice"):
    """As kube-apiserver sends it: kind autoscaling/v1 Scale on resource apps/deployments,
    and Scale omits replicas when they are 0."""
    def body(n):
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "spec": {"replicas": n} if n else {}}
    return review("deployments", "UPDATE", obj=body(new), old=body(old), user=user,
                  group="apps", kind_group="autoscaling", kind="Scale", name="checkout",
                  sub="scale")


def test_scale_to_zero_by_a_person_is_denied_with_the_approval_path():
    decision = run(scale(3, 0))
    assert not decision.allowed and decision.code == "scale_down"
    assert "spec.replicas" in decision.message


def test_scale_from_one_to_zero_is_a_scale_down():
    decision = run(scale(1, 0))
    assert not decision.allowed and decision.code == "scale_down"


def test_scale_up_and_the_autoscaler_pass():
    assert run(scale(3, 5)).allowed
    assert run(scale(5, 2, user="system:serviceaccount:kube-system:horizontal-pod-autoscaler")
               ).allowed


def test_status_is_never_intercepted():
    doc = fixture("deployment-update")
    doc["request"]["subResource"] = "status"
    assert run(doc).code == "not_gated"


# --- ChangeApproval admission ----------------------------------------------------------------

def ca_review(approval, user="alice", op="CREATE", old=None, namespace="payments"):
    return review("changeapprovals", op, obj=approval, old=old, user=user,
                  group="changegate.io", kind="ChangeApproval", namespace=namespace,
                  name=approval["metadata"]["name"])


def test_requested_by_must_equal_the_creator():
    approval = approval_for(fixture("deployment-update"), requested_by="alice")
    assert run(ca_review(approval, user="alice")).allowed
    decision = run(ca_review(approval, user="mallory"))
    assert not decision.allowed and decision.code == "requester_mismatch"


def test_trusted_creator_needs_the_requesters_own_signature():
    approval = approval_for(fixture("deployment-update"), requested_by="alice")
    gitops = "system:serviceaccount:argocd:argocd-application-controller"
    policy = f"trustedCreators: [{gitops}]"
    assert run(ca_review(approval, user=gitops), policy=policy).code == "requester_mismatch"
    assert run(ca_review(sign(approval, "alice"), user=gitops), policy=policy).allowed


OPERATOR = "system:serviceaccount:changegate:changegate-operator"


def test_the_operator_names_someone_else_only_on_a_review_owed():
    """SPEC §7a: the operator's account creates reviews owed for dana's break-glass change
    (requestedBy dana), whose nonce it recorded first. It may not create a live approval for
    anyone else: that would let it, or whoever holds its token, request in others' names."""
    import base64
    import json
    approval = approval_for(fixture("deployment-update"), requested_by="dana")
    decision = run(ca_review(approval, user=OPERATOR))
    assert not decision.allowed and decision.code == "requester_mismatch"
    nonce = json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]
    ledger = [{"kind": "ConfigMap", "metadata": {"name": "changegate-ledger-0"},
               "data": {nonce: "{}"}}]
    decision = run(ca_review(approval, user=OPERATOR), ledger=ledger)
    assert decision.allowed and "review owed" in decision.detail
    # Anyone else still gets approval_used for a copied, used statement.
    assert run(ca_review(approval, user="dana"), ledger=ledger).code == "approval_used"


def test_manifest_must_have_the_signed_digest():
    approval = approval_for(fixture("deployment-update"))
    approval["spec"]["manifest"]["spec"]["replicas"] = 0
    decision = run(ca_review(approval))
    assert not decision.allowed and decision.code == "manifest_mismatch"


def test_spec_fields_must_equal_the_statement():
    approval = approval_for(fixture("deployment-update"))
    approval["spec"]["toDigest"] = "sha256:" + "0" * 64
    assert run(ca_review(approval)).code == "spec_statement_mismatch"


def test_statement_for_another_namespace_is_refused():
    approval = approval_for(fixture("deployment-update"))
    approval["metadata"]["namespace"] = "shipping"
    assert run(ca_review(approval, namespace="shipping")).code == "spec_statement_mismatch"


def test_malformed_statement_is_rejected_with_what_is_wrong():
    approval = approval_for(fixture("deployment-update"))
    approval["spec"]["statement"] = "not base64!"
    decision = run(ca_review(approval))
    assert decision.code == "statement_invalid" and "base64" in decision.message


def test_spec_is_immutable_and_signatures_append_only():
    approval = approval_for(fixture("deployment-update"))
    signed_once = sign(approval, "bob")
    assert run(ca_review(sign(signed_once, "carol"), op="UPDATE", old=signed_once)).allowed
    swapped = copy.deepcopy(signed_once)
    swapped["spec"]["requestedBy"] = "mallory"
    assert run(ca_review(swapped, op="UPDATE", old=signed_once)).code == "approval_immutable"
    stripped = copy.deepcopy(signed_once)
    stripped["spec"]["signatures"] = []
    assert run(ca_review(stripped, op="UPDATE", old=signed_once)).code == "approval_immutable"


def test_canary_rollout_only_in_canary_namespaces():
    approval = approval_for(fixture("deployment-update"),
                            rollout={"strategy": "canary", "canary": {"replicas": 1}})
    assert run(ca_review(approval)).code == "canary_required"
    canary_ns = ns(annotations={"changegate.io/enforcement": "canary"})
    assert run(ca_review(approval), canary_ns).allowed
    big = approval_for(fixture("deployment-update"),
                       rollout={"strategy": "canary", "canary": {"replicas": 5}})
    assert run(ca_review(big), canary_ns).code == "canary_required"


def test_a_used_nonce_cannot_be_copied_into_a_new_approval():
    import base64
    import json
    approval = approval_for(fixture("deployment-update"))
    nonce = json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]
    ledger = [{"kind": "ConfigMap", "metadata": {"name": "changegate-ledger-0"},
               "data": {nonce: "{}"}}]
    assert run(ca_review(approval), ledger=ledger).code == "approval_used"


def test_canary_namespace_refuses_direct_deployment_updates():
    doc = fixture("deployment-update")
    approval = sign(approval_for(doc), "bob", "carol")
    decision = run(doc, approval, ns(annotations={"changegate.io/enforcement": "canary"}))
    assert not decision.allowed and decision.code == "canary_required"


def test_metadata_only_update_of_an_approval_passes_even_with_a_broken_config():
    """The operator's finalizer must always be removable, or approvals become undeletable."""
    approval = approval_for(fixture("deployment-update"))
    with_finalizer = copy.deepcopy(approval)
    with_finalizer["metadata"]["finalizers"] = ["changegate.io/operator"]
    doc = ca_review(approval, op="UPDATE", old=with_finalizer)
    assert run(doc, trust="approvers: [{name: x, keys: [broken]}]").allowed
