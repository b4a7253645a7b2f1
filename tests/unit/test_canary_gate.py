"""The webhook's side of the canary gate (SPEC §7): who may create, delete and promote."""

from __future__ import annotations

import copy
from typing import Any

from changegate.core import canary
from changegate.core.decision import Context, decide
from changegate.core.review import parse_review
from changegate.core.snapshot import ProcessConfig
from tests.support import NOW, approval_for, fixture, sign, snapshot
from tests.unit.test_guards import review

OPERATOR = ProcessConfig().operator_service_account
GC = "system:serviceaccount:kube-system:generic-garbage-collector"
CANARY_NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
    "name": "payments", "labels": {"tier": "tier-1"},
    "annotations": {"changegate.io/enforcement": "canary"}}}


def canary_approval(*signers: str, replicas: int = 1, phase: str = "") -> dict[str, Any]:
    a = approval_for(fixture("deployment-update"),
                     rollout={"strategy": "canary", "canary": {"replicas": replicas,
                                                               "bakeSeconds": 5}})
    a = sign(a, *signers)
    if phase:
        a["status"] = {"phase": phase}
    return a


def the_canary(approval: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    return canary.build_canary(approval["spec"]["manifest"], approval["metadata"]["name"],
                               approval["metadata"]["uid"], replicas)


def deploy_review(op: str, obj: Any, old: Any = None, user: str = OPERATOR,
                  name: str = "") -> dict[str, Any]:
    name = name or (obj or old)["metadata"]["name"]
    return review("deployments", op, obj=obj, old=old, user=user, name=name, group="apps",
                  kind="Deployment")


def run(doc: dict[str, Any], *objects: dict[str, Any], policy: str = "") -> Any:
    return decide(parse_review(doc), snapshot(CANARY_NS, *objects, policy=policy), NOW,
                  Context())


def test_operator_creates_the_canary_with_canary_min_approvals() -> None:
    a = canary_approval("bob")
    d = run(deploy_review("CREATE", the_canary(a)), a)
    assert d.allowed, d.message
    assert d.approvers == ("bob",)


def test_no_canary_without_a_valid_approval() -> None:
    a = canary_approval()
    d = run(deploy_review("CREATE", the_canary(a)), a)
    assert not d.allowed and "0/1" in d.message


def test_canary_is_created_only_by_the_operator() -> None:
    a = canary_approval("bob")
    d = run(deploy_review("CREATE", the_canary(a), user="alice"), a)
    assert not d.allowed and d.code == "canary_required"
    assert "only the changegate operator creates a canary" in d.message


def test_a_label_grants_nothing_without_the_owning_approval() -> None:
    a = canary_approval("bob")
    obj = the_canary(a)
    obj["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert run(deploy_review("CREATE", obj), a).code == "no_approval"


def test_canary_must_be_exactly_what_the_approval_asks_for() -> None:
    a = canary_approval("bob")
    obj = the_canary(a)
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    d = run(deploy_review("CREATE", obj), a)
    assert not d.allowed and "spec.template.spec" in d.message
    assert not run(deploy_review("CREATE", the_canary(a, replicas=2)), a).allowed


def test_canary_replicas_are_capped_by_max_canary_replicas() -> None:
    a = canary_approval("bob", replicas=2)
    assert run(deploy_review("CREATE", the_canary(a, 2)), a,
               policy="maxCanaryReplicas: 2").allowed
    # The policy lowered since the approval was signed: the cap applies when read.
    assert not run(deploy_review("CREATE", the_canary(a, 2)), a).allowed
    assert run(deploy_review("CREATE", the_canary(a, 1)), a).allowed


def test_a_run_that_ended_never_gets_a_canary_again() -> None:
    for phase in ("CanaryFailed", "Applied"):
        a = canary_approval("bob", phase=phase)
        d = run(deploy_review("CREATE", the_canary(a)), a)
        assert not d.allowed and "has ended" in d.message


def test_a_direct_approval_does_not_create_a_canary() -> None:
    a = sign(approval_for(fixture("deployment-update")), "bob", "carol")
    d = run(deploy_review("CREATE", the_canary(a)), a)
    assert not d.allowed and d.code == "canary_required"


def test_only_the_operator_and_the_garbage_collector_delete_a_canary() -> None:
    a = canary_approval("bob")
    obj = the_canary(a)
    assert run(deploy_review("DELETE", None, obj), a).allowed
    assert not run(deploy_review("DELETE", None, obj, user="alice"), a).allowed
    assert not run(deploy_review("DELETE", None, obj, user=GC), a).allowed  # owner alive
    assert run(deploy_review("DELETE", None, obj, user=GC)).allowed  # owner gone


def test_a_deployment_named_like_a_canary_without_owner_is_not_deletable_as_one() -> None:
    obj = copy.deepcopy(fixture("deployment-update")["request"]["oldObject"])
    obj["metadata"]["name"] = "checkout-canary"
    assert not run(deploy_review("DELETE", None, obj)).allowed


def test_nobody_changes_a_canary_in_place() -> None:
    a = canary_approval("bob")
    old = the_canary(a)
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "other:1"
    d = run(deploy_review("UPDATE", new, old), a)
    assert not d.allowed and d.code == "canary_required"


def test_direct_update_in_a_canary_namespace_explains_the_canary_path() -> None:
    doc = fixture("deployment-update")
    d = run(doc, sign(approval_for(doc), "bob", "carol"))
    assert not d.allowed and d.code == "canary_required"
    assert "changegate request --canary" in d.message and "promotes" in d.message


def _promotion(approval: dict[str, Any]) -> Any:
    doc = copy.deepcopy(fixture("deployment-update"))
    doc["request"]["userInfo"]["username"] = OPERATOR
    return run(doc, approval)


def test_operator_promotes_only_a_canary_that_passed() -> None:
    assert _promotion(canary_approval("bob", "carol", phase="Promoted")).allowed
    held = _promotion(canary_approval("bob", "carol", phase="CanaryRunning"))
    assert not held.allowed and "has not passed" in held.message


def test_promotion_still_needs_every_approval() -> None:
    d = _promotion(canary_approval("bob", phase="Promoted"))
    assert not d.allowed and d.code == "approvals_insufficient"


def test_operator_cannot_apply_a_direct_approval_in_a_canary_namespace() -> None:
    a = sign(approval_for(fixture("deployment-update")), "bob", "carol")
    a["status"] = {"phase": "Promoted"}
    d = _promotion(a)
    assert not d.allowed and "no canary rollout" in d.message


def test_abort_annotation_is_a_metadata_update_the_webhook_admits() -> None:
    a = canary_approval("bob")
    new = copy.deepcopy(a)
    new["metadata"].setdefault("annotations", {})[canary.ABORT_ANNOTATION] = "alice: bad"
    doc = review("changeapprovals", "UPDATE", obj=new, old=a, user="alice",
                 name=a["metadata"]["name"], group="changegate.io", kind="ChangeApproval")
    assert run(doc, a).allowed


def test_configmaps_in_a_canary_namespace_are_decided_as_in_deny() -> None:
    doc = fixture("configmap-update")
    assert run(doc).code == "no_approval"
    assert run(doc, sign(approval_for(doc), "bob", "carol")).allowed
