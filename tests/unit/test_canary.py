"""The canary state machine (SPEC §7), one test per rule it protects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from changegate.core import canary as c
from changegate.core.canary import Canary, Facts, Health
from changegate.core.statement import format_time

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
HEALTHY = Canary(owned=True, health=Health(True, "", "1/1 ready"))


def facts(**kw: Any) -> Facts:
    base = Facts(phase="Pending", progress={}, canary_mode=True, operation="UPDATE", valid=True,
                 invalid="", approvals=1, min_approvals=1, complete=False, required=2,
                 expired=False, used="", aborted="", canary=None, target_at_to=False,
                 target_at_from=True, bake=30, now=NOW)
    return replace(base, **kw)


def ago(seconds: int) -> str:
    return format_time(NOW - timedelta(seconds=seconds))


def running(**kw: Any) -> Facts:
    return facts(phase="CanaryRunning", progress={"startedAt": ago(60)}, canary=HEALTHY, **kw)


# --- starting --------------------------------------------------------------------------

def test_canary_starts_at_canary_min_approvals_before_approvals_are_complete() -> None:
    s = c.step(facts())
    assert (s.action, s.phase) == ("create", "CanaryRunning")
    assert s.progress["startedAt"] == format_time(NOW)


def test_no_canary_below_canary_min_approvals() -> None:
    s = c.step(facts(approvals=0))
    assert s.action == "none" and "0/1 approvals" in s.message


@pytest.mark.parametrize(("kw", "says"), [
    ({"valid": False, "invalid": "manifest_mismatch"}, "manifest_mismatch"),
    ({"expired": True}, "expired"),
    ({"used": "nonce used by payments/other"}, "nonce used"),
    ({"canary_mode": False}, "not canary"),
    ({"operation": "CREATE"}, "CREATE"),
])
def test_no_canary_for_an_approval_that_does_not_qualify(kw: dict[str, Any], says: str) -> None:
    s = c.step(facts(**kw))
    assert s.action == "none" and says in s.message


def test_never_adopts_a_canary_someone_else_created() -> None:
    s = c.step(facts(canary=Canary(owned=False, health=Health(True))))
    assert s.action == "wait" and s.reason == "CanaryNameTaken" and s.phase == ""


def test_own_canary_left_by_a_crash_before_the_status_write_is_taken_up() -> None:
    # Created, then the operator died before writing CanaryRunning: it is ours (owner uid).
    s = c.step(facts(canary=HEALTHY))
    assert (s.action, s.phase) == ("create", "CanaryRunning")


def test_an_approval_being_deleted_starts_nothing() -> None:
    assert c.step(facts(deleted=True)).action == "none"


def test_abort_before_start_fails_the_run() -> None:
    s = c.step(facts(aborted="not today"))
    assert (s.action, s.phase, s.reason, s.result) == ("fail", "CanaryFailed", "Aborted",
                                                        "aborted")


# --- running ---------------------------------------------------------------------------

def test_waits_while_the_canary_is_not_ready() -> None:
    f = running()
    f = replace(f, canary=Canary(True, Health(False, "", "0/1 ready")))
    s = c.step(f)
    assert (s.action, s.phase, s.reason) == ("wait", "CanaryRunning", "Progressing")
    assert "healthySince" not in s.progress


def test_bake_starts_when_the_canary_is_first_healthy() -> None:
    s = c.step(running())
    assert (s.action, s.reason) == ("wait", "Baking")
    assert s.progress["healthySince"] == format_time(NOW)


def test_unready_canary_restarts_the_bake() -> None:
    f = running()
    f = replace(f, progress={**f.progress, "healthySince": ago(20)},
                canary=Canary(True, Health(False, "", "0/1 ready")))
    assert "healthySince" not in c.step(f).progress


def test_no_promotion_before_bake_seconds() -> None:
    f = running(complete=True)
    f = replace(f, progress={**f.progress, "healthySince": ago(29)})
    assert c.step(f).action == "wait"


def test_baked_canary_waits_for_complete_approvals() -> None:
    f = running()
    f = replace(f, progress={**f.progress, "healthySince": ago(31)})
    s = c.step(f)
    assert (s.action, s.reason) == ("wait", "WaitingForApprovals")


def test_promotes_when_baked_and_approvals_complete() -> None:
    f = running(complete=True, approvals=2)
    f = replace(f, progress={**f.progress, "healthySince": ago(31)})
    s = c.step(f)
    assert (s.action, s.phase) == ("promote", "Promoted")
    assert s.progress["healthySince"] == ago(31)


def test_progress_survives_a_restart() -> None:
    # The same stored status and clock give the same step: nothing lives in memory.
    f = running(complete=True, approvals=2)
    f = replace(f, progress={**f.progress, "healthySince": ago(31)})
    assert c.step(f) == c.step(f)


@pytest.mark.parametrize("failure", ["PodRestarted", "ContainerFailed", "PodFailed",
                                     "ImagePullFailed", "ProgressDeadlineExceeded"])
def test_unhealthy_canary_fails(failure: str) -> None:
    f = replace(running(), canary=Canary(True, Health(False, failure, "why")))
    s = c.step(f)
    assert (s.action, s.phase, s.reason) == ("fail", "CanaryFailed", failure)
    assert s.result == ("deadline" if failure == "ProgressDeadlineExceeded" else "unhealthy")
    assert "endedAt" in s.progress


def test_not_ready_within_progress_deadline_fails() -> None:
    f = running()
    f = replace(f, progress={"startedAt": ago(601)},
                canary=Canary(True, Health(False, "", "0/1 ready")))
    s = c.step(f)
    assert (s.action, s.reason, s.result) == ("fail", "ProgressDeadlineExceeded", "deadline")


@pytest.mark.parametrize(("kw", "reason", "result"), [
    ({"aborted": "bad idea"}, "Aborted", "aborted"),
    ({"deleted": True}, "ApprovalDeleted", "deleted"),
    ({"expired": True}, "ApprovalExpired", "expired"),
    ({"used": "used elsewhere"}, "ApprovalUsed", "invalid"),
    ({"valid": False, "invalid": "signature removed"}, "ApprovalInvalid", "invalid"),
    ({"analysis_failure": "error rate 5%"}, "AnalysisFailed", "analysis"),
    ({"target_at_from": False}, "TargetChanged", "target_changed"),
])
def test_running_canary_stops(kw: dict[str, Any], reason: str, result: str) -> None:
    s = c.step(running(**kw))
    assert (s.action, s.phase, s.reason, s.result) == ("fail", "CanaryFailed", reason, result)


def test_canary_deleted_by_someone_else_fails() -> None:
    s = c.step(replace(running(), canary=None))
    assert (s.action, s.reason) == ("fail", "CanaryDeleted")


def test_canary_scaled_past_its_approval_fails() -> None:
    f = replace(running(), canary=Canary(True, Health(True), changed="scaled to 5"))
    assert (c.step(f).action, c.step(f).reason) == ("fail", "CanaryChanged")


def test_canary_replicas_default_to_one_and_never_exceed_max_canary_replicas() -> None:
    import base64

    from changegate.core.policy import load_policy
    from changegate.core.statement import parse_statement
    from tests.support import approval_for, fixture

    def st(rollout: dict[str, Any]) -> Any:
        a = approval_for(fixture("deployment-update"), rollout=rollout)
        return parse_statement(base64.b64decode(a["spec"]["statement"]))

    assert c.replicas_for(st({"strategy": "canary"}), load_policy("")) == 1
    three = st({"strategy": "canary", "canary": {"replicas": 3, "bakeSeconds": 9}})
    assert c.replicas_for(three, load_policy("")) == 1
    assert c.replicas_for(three, load_policy("maxCanaryReplicas: 5")) == 3
    assert c.bake_seconds(three) == 9


def test_canary_replaced_by_someone_elses_fails() -> None:
    s = c.step(replace(running(), canary=Canary(False, Health(True))))
    assert (s.action, s.reason) == ("fail", "CanaryNotOwned")


# --- promoting and after -----------------------------------------------------------------

def test_promotion_is_retried_until_the_deployment_has_to_digest() -> None:
    s = c.step(facts(phase="Promoted", progress={"startedAt": ago(60)}))
    assert (s.action, s.phase) == ("promote", "Promoted")


def test_promotion_that_landed_finishes_applied() -> None:
    s = c.step(facts(phase="Promoted", target_at_to=True, target_at_from=False))
    assert (s.action, s.phase, s.result) == ("finish", "Applied", "promoted")


def test_expiry_before_the_promotion_landed_fails() -> None:
    s = c.step(facts(phase="Promoted", expired=True))
    assert (s.action, s.reason) == ("fail", "ApprovalExpired")


def test_deletion_during_promotion_fails() -> None:
    assert c.step(facts(phase="Promoted", deleted=True)).reason == "ApprovalDeleted"


def test_abort_during_promotion_fails_unless_it_landed() -> None:
    assert c.step(facts(phase="Promoted", aborted="x")).reason == "Aborted"
    assert c.step(facts(phase="Promoted", aborted="x", target_at_to=True)).action == "finish"


@pytest.mark.parametrize("phase", ["CanaryFailed", "Applied", "Expired", "Rejected"])
def test_a_run_ends_once(phase: str) -> None:
    assert c.step(facts(phase=phase, aborted="x", canary=HEALTHY)).action == "none"


# --- the canary object and its health ------------------------------------------------------

MANIFEST = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                         "uid": "u1", "resourceVersion": "9"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "w", "image": "web:2"}]}}},
            "status": {"replicas": 4}}


def test_canary_object_is_the_proposed_template_labelled_and_owned() -> None:
    d = c.build_canary(MANIFEST, "chg-1", "ca-uid", 1)
    assert d["metadata"]["name"] == "web-canary"
    assert d["metadata"]["labels"] == {"app": "web", c.LABEL: "true"}
    assert d["spec"]["template"]["metadata"]["labels"] == {"app": "web", c.LABEL: "true"}
    assert d["spec"]["selector"]["matchLabels"] == {"app": "web", c.LABEL: "true"}
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["template"]["spec"] == MANIFEST["spec"]["template"]["spec"]  # type: ignore[index]
    assert c.owner_uid(d) == "ca-uid"
    assert "uid" not in d["metadata"] and "status" not in d
    assert MANIFEST["spec"]["replicas"] == 4  # type: ignore[index]  # not modified


def test_webhook_comparison_names_what_differs() -> None:
    want = c.build_canary(MANIFEST, "chg-1", "ca-uid", 1)
    assert c.same_canary(want, want) == []
    other = c.build_canary({**MANIFEST, "spec": {**MANIFEST["spec"], "template": {  # type: ignore[dict-item]
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "w", "image": "evil:1"}]}}}}, "chg-1", "x", 3)
    assert c.same_canary(other, want) == ["spec.template.spec", "spec.replicas",
                                           "metadata.ownerReferences"]


def pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": status}


def deployment(ready: int, want: int = 1, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "spec": {"replicas": want},
            "status": {"observedGeneration": 2, "replicas": ready, "updatedReplicas": ready,
                       "readyReplicas": ready, "availableReplicas": ready, **extra}}


def test_ready_means_every_replica_updated_ready_and_available() -> None:
    assert c.observe(deployment(1), []).ready
    assert not c.observe(deployment(0), []).ready
    assert not c.observe(deployment(1, want=2), []).ready
    stale = deployment(1)
    stale["status"]["observedGeneration"] = 1
    assert not c.observe(stale, []).ready


@pytest.mark.parametrize(("status", "failure"), [
    ({"phase": "Failed", "reason": "Chaos"}, "PodFailed"),
    ({"containerStatuses": [{"name": "w", "restartCount": 1}]}, "PodRestarted"),
    ({"containerStatuses": [{"name": "w", "restartCount": 0,
                             "state": {"terminated": {"exitCode": 2}}}]}, "ContainerFailed"),
    ({"containerStatuses": [{"name": "w", "restartCount": 0,
                             "lastState": {"terminated": {"exitCode": 137}}}]}, "ContainerFailed"),
    ({"containerStatuses": [{"name": "w", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
     "ImagePullFailed"),
    ({"initContainerStatuses": [{"name": "i", "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}}]}, "ContainerFailed"),
])
def test_failed_pods_and_containers_are_unhealthy(status: dict[str, Any], failure: str) -> None:
    h = c.observe(deployment(1), [pod(**status)])
    assert (h.ready, h.failure) == (False, failure)


def test_a_clean_exit_is_not_a_failure() -> None:
    ok = pod(phase="Running", containerStatuses=[{"name": "w", "restartCount": 0, "lastState": {
        "terminated": {"exitCode": 0}}}])
    assert c.observe(deployment(1), [ok]).failure == ""


def test_progress_deadline_exceeded_condition_is_unhealthy() -> None:
    d = deployment(0, conditions=[{"type": "Progressing", "status": "False",
                                   "reason": "ProgressDeadlineExceeded", "message": "slow"}])
    assert c.observe(d, []).failure == "ProgressDeadlineExceeded"


def test_canary_name_and_its_base() -> None:
    assert c.canary_name("web") == "web-canary"
    assert c.base_name("web-canary") == "web"
    assert c.base_name("-canary") is None and c.base_name("web") is None
