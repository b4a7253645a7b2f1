"""The canary gate (SPEC §7), pure: what the canary Deployment is, how healthy it is, and
what the operator does next.

The operator gathers the facts (the ChangeApproval and its verification, the canary
Deployment and its pods, the main Deployment, the clock) and calls ``step``; the answer
is an action and the status to write. Progress lives in the ChangeApproval's status
(``status.canary``: when the canary started, since when it has been healthy), so an
operator that restarts mid-bake resumes from what the API holds, never from memory.
The webhook uses ``build_canary`` and ``replicas_for`` to check that a canary the
operator creates is exactly the one the approval asks for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from changegate.core.errors import StatementError
from changegate.core.policy import Policy
from changegate.core.statement import Statement, format_time, parse_time

LABEL = "changegate.io/canary"  # on the canary Deployment and on its pod template
ABORT_ANNOTATION = "changegate.io/abort"  # on the ChangeApproval: `changegate canary abort`
SUFFIX = "-canary"
DEFAULT_PROGRESS_DEADLINE = 600  # the Deployment API's own default
# Phases the canary flow owns; approvals.py leaves them alone.
RUNNING = "CanaryRunning"
PROMOTED = "Promoted"
FAILED = "CanaryFailed"
# Waiting reasons of kubelet (and kwok) that mean the container will not start as proposed.
IMAGE_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "ErrImageNeverPull"})
CRASH_WAITING = frozenset({"CrashLoopBackOff", "CreateContainerConfigError",
                           "CreateContainerError", "RunContainerError"})

Action = Literal["none", "wait", "create", "promote", "finish", "fail"]


def canary_name(target: str) -> str:
    return target + SUFFIX


def base_name(name: str) -> str | None:
    """``checkout-canary`` -> ``checkout``; None for a name that is no canary's."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else None


def replicas_for(st: Statement, policy: Policy) -> int:
    """``rollout.canary.replicas`` (default 1), never above ``maxCanaryReplicas``. Applied
    when read: the approval's spec must stay equal to its signed statement."""
    canary = st.predicate.rollout.canary
    wanted = canary.replicas if canary is not None else 1
    return max(1, min(wanted, policy.maxCanaryReplicas))


def bake_seconds(st: Statement) -> int:
    canary = st.predicate.rollout.canary
    return canary.bakeSeconds if canary is not None else 0


def _labelled(labels: Any) -> dict[str, str]:
    out = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    out[LABEL] = "true"
    return out


def build_canary(manifest: Mapping[str, Any], approval: str, approval_uid: str,
                 replicas: int) -> dict[str, Any]:
    """The canary Deployment for an approval's manifest: the proposed pod template with
    the canary label added (pods keep the Service's labels, so they take traffic), a
    selector narrowed by the same label (the main Deployment's ReplicaSets never match
    it), ``replicas`` replicas, owned by the ChangeApproval so it never outlives it."""
    meta = manifest.get("metadata") or {}
    spec = copy.deepcopy(dict(manifest.get("spec") or {}))
    template = spec.get("template") or {}
    tmeta = dict(template.get("metadata") or {})
    tmeta["labels"] = _labelled(tmeta.get("labels"))
    template = {**template, "metadata": tmeta}
    selector = dict(spec.get("selector") or {})
    selector["matchLabels"] = _labelled(selector.get("matchLabels"))
    spec.update(template=template, selector=selector, replicas=replicas, paused=False)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": canary_name(str(meta.get("name", ""))),
            "namespace": str(meta.get("namespace", "")),
            "labels": _labelled(meta.get("labels")),
            "ownerReferences": [{
                "apiVersion": "changegate.io/v1alpha1", "kind": "ChangeApproval",
                "name": approval, "uid": approval_uid, "controller": True,
                "blockOwnerDeletion": False}],
        },
        "spec": spec,
    }


def owner_uid(obj: Mapping[str, Any] | None) -> str | None:
    """The uid of the ChangeApproval that controls this object, if one does."""
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if (isinstance(ref, dict) and ref.get("kind") == "ChangeApproval"
                and str(ref.get("apiVersion", "")).startswith("changegate.io/")
                and ref.get("controller")):
            return str(ref.get("uid", ""))
    return None


def same_canary(got: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Where a canary as submitted differs from what its approval asks for (the webhook's
    check of the operator's CREATE): pod template, selector, replicas, owner."""
    g, e = got.get("spec") or {}, expected.get("spec") or {}
    wrong = []
    tg, te = g.get("template") or {}, e.get("template") or {}
    if tg.get("spec") != te.get("spec"):
        wrong.append("spec.template.spec")
    if ((tg.get("metadata") or {}).get("labels") or {}) != (
            (te.get("metadata") or {}).get("labels") or {}):
        wrong.append("spec.template.metadata.labels")
    if (g.get("selector") or {}).get("matchLabels") != (e.get("selector") or {}).get(
            "matchLabels") or (g.get("selector") or {}).get("matchExpressions"):
        wrong.append("spec.selector")
    if not isinstance(g.get("replicas"), int) or g["replicas"] > e["replicas"]:
        wrong.append("spec.replicas")
    if owner_uid(got) != owner_uid(expected):
        wrong.append("metadata.ownerReferences")
    return wrong


# --- health ------------------------------------------------------------------------

@dataclass(frozen=True)
class Health:
    ready: bool  # every desired replica updated, ready and available, nothing else running
    failure: str = ""  # a condition reason: PodRestarted, ContainerFailed, PodFailed, ...
    detail: str = ""


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [c for key in ("initContainerStatuses", "containerStatuses")
            for c in status.get(key) or [] if isinstance(c, dict)]


def _pod_failure(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        why = status.get("reason") or status.get("message") or "Failed"
        return "PodFailed", f"canary pod {name} failed ({why})"
    for c in _containers(pod):
        cname = c.get("name", "?")
        if int(c.get("restartCount") or 0) > 0:
            return "PodRestarted", (f"container {cname} of canary pod {name} restarted "
                                    f"{c.get('restartCount')} time(s)")
        for key in ("state", "lastState"):
            terminated = (c.get(key) or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if isinstance(code, int) and code != 0:
                return "ContainerFailed", (f"container {cname} of canary pod {name} exited "
                                           f"with code {code}")
        waiting = ((c.get("state") or {}).get("waiting") or {}).get("reason")
        if waiting in IMAGE_WAITING:
            return "ImagePullFailed", f"canary pod {name}: {cname} {waiting}"
        if waiting in CRASH_WAITING:
            return "ContainerFailed", f"canary pod {name}: {cname} {waiting}"
    return None


def _condition(deployment: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for c in (deployment.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return {}


def observe(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Health:
    """The canary's health from its Deployment and its pods. A failed pod counts even after
    its ReplicaSet replaced it: kwok and kubelet both keep it until pod GC."""
    for pod in pods:
        found = _pod_failure(pod)
        if found:
            return Health(False, *found)
    progressing = _condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health(False, "ProgressDeadlineExceeded",
                      f"the canary did not become ready: {progressing.get('message', '')}")
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    status = deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    counts = [int(status.get(k) or 0) for k in ("updatedReplicas", "readyReplicas",
                                                 "availableReplicas", "replicas")]
    current = status.get("observedGeneration") == meta.get("generation")
    ready = current and all(n == want for n in counts) and not int(
        status.get("unavailableReplicas") or 0)
    return Health(ready, "", f"{counts[1]}/{want} ready, {counts[2]}/{want} available")


# --- the state machine ---------------------------------------------------------------

@dataclass(frozen=True)
class Canary:
    """The canary Deployment as observed: None in ``Facts.canary`` when it does not exist."""

    owned: bool  # controlled by this ChangeApproval (ownerReference uid)
    health: Health
    progress_deadline: int = DEFAULT_PROGRESS_DEADLINE
    changed: str = ""  # how it differs from what the approval asks for (scaled, ...)


@dataclass(frozen=True)
class Facts:
    phase: str  # status.phase as stored ("" before the operator's first status)
    progress: Mapping[str, Any]  # status.canary as stored
    canary_mode: bool  # the namespace's enforcement is canary
    operation: str
    valid: bool  # verified statement, manifest at toDigest, record and cluster right
    invalid: str  # why not, when not valid
    approvals: int  # valid approvals by others than the requester
    min_approvals: int  # canaryMinApprovals
    complete: bool  # every rule of SPEC §4 on the approval itself holds (phase Approved)
    required: int
    expired: bool
    used: str  # non-empty: the nonce is in the ledger for another approval (why)
    aborted: str  # the abort annotation's value, "" when absent
    canary: Canary | None
    target_at_to: bool  # the main Deployment already has toDigest
    target_at_from: bool  # the main Deployment is still where the approval starts
    bake: int
    now: datetime
    analysis_failure: str = ""  # non-empty: the optional analysis failed or could not run
    deleted: bool = False  # the ChangeApproval is being deleted


@dataclass(frozen=True)
class Step:
    action: Action
    phase: str  # the phase to write ("" leaves it)
    reason: str = ""  # the Canary condition's reason
    message: str = ""
    progress: Mapping[str, Any] = field(default_factory=dict)  # status.canary to write
    result: str = ""  # the changegate_canary_runs_total result of a run that ends here

    @property
    def failed(self) -> bool:
        return self.action == "fail"


# Failure reasons -> the bounded `result` label of changegate_canary_runs_total.
RESULTS = {"Aborted": "aborted", "ApprovalExpired": "expired", "ApprovalDeleted": "deleted",
           "ApprovalInvalid": "invalid", "ApprovalUsed": "invalid",
           "TargetChanged": "target_changed", "CanaryDeleted": "unhealthy",
           "CanaryNotOwned": "unhealthy", "CanaryChanged": "unhealthy",
           "AnalysisFailed": "analysis", "ProgressDeadlineExceeded": "deadline"}


def _fail(f: Facts, reason: str, message: str) -> Step:
    progress = {**f.progress, "endedAt": format_time(f.now)}
    return Step("fail", FAILED, reason, message, progress, RESULTS.get(reason, "unhealthy"))


def _since(text: Any, now: datetime) -> float:
    try:
        return (now - parse_time(str(text))).total_seconds()
    except StatementError:  # unreadable progress reads as "just now": nothing is skipped
        return 0.0


def qualifies(f: Facts) -> str:
    """Why the canary may not start yet ("" when it may): SPEC §7's preconditions."""
    if not f.canary_mode:
        return "the namespace's enforcement is not canary"
    if f.operation != "UPDATE":
        return f"a canary runs a change to a live Deployment; this approval is a {f.operation}"
    if not f.valid:
        return f.invalid or "the approval is not valid"
    if f.used:
        return f.used
    if f.expired:
        return "the approval expired"
    if f.approvals < f.min_approvals:
        return (f"{f.approvals}/{f.min_approvals} approvals by others than the requester: "
                "the canary starts at canaryMinApprovals")
    return ""


def step(f: Facts) -> Step:
    """The next action for one canary ChangeApproval. Idempotent: the same facts give the
    same step, so running it twice (event and timer) does nothing twice."""
    if f.phase in (FAILED, "Applied", "Expired", "Rejected", "ReviewOwed", "Reviewed"):
        return Step("none", "")
    started = f.phase in (RUNNING, PROMOTED)
    if not started:
        return _before(f)
    if f.phase == PROMOTED:
        return _promoted(f)
    return _running(f)


def _before(f: Facts) -> Step:
    if f.deleted:
        return Step("none", "", "NotStarted", "the approval is being deleted")
    if f.aborted:
        return _fail(f, "Aborted", f"aborted before the canary started: {f.aborted}")
    why = qualifies(f)
    if why:
        return Step("none", "", "NotStarted", why)
    if f.canary is not None and not f.canary.owned:
        # Never adopt: a Deployment of that name that this approval does not own is not a
        # canary the operator vouches for. Wait, saying so, until it is gone.
        return Step("wait", "", "CanaryNameTaken",
                    "a Deployment with the canary's name exists and is not this approval's")
    progress = {"startedAt": format_time(f.now)}
    return Step("create", RUNNING, "Started", "canary created; waiting for it to become ready",
                progress)


def _stop_reasons(f: Facts) -> Step | None:
    """What ends a running canary whatever its health."""
    if f.deleted:
        return _fail(f, "ApprovalDeleted", "the approval was deleted during the canary")
    if f.aborted:
        return _fail(f, "Aborted", f"aborted: {f.aborted}")
    if f.expired:
        return _fail(f, "ApprovalExpired", "the approval expired during the canary")
    if f.used:
        return _fail(f, "ApprovalUsed", f.used)
    if not f.valid:
        return _fail(f, "ApprovalInvalid", f.invalid or "the approval is no longer valid")
    return None


def _running(f: Facts) -> Step:
    stop = _stop_reasons(f)
    if stop:
        return stop
    if not f.target_at_from and not f.target_at_to:
        return _fail(f, "TargetChanged", "the Deployment moved away from fromDigest during the "
                                         "canary: the approval can no longer apply")
    c = f.canary
    if c is None:
        return _fail(f, "CanaryDeleted", "the canary Deployment was deleted by someone else")
    if not c.owned:
        return _fail(f, "CanaryNotOwned", "the canary Deployment is not this approval's")
    if c.changed:
        # Scale-ups skip the webhook by design (SPEC §5): a canary grown past its size
        # would run a change short of its approvals at scale. Stop it.
        return _fail(f, "CanaryChanged", c.changed)
    if c.health.failure:
        return _fail(f, c.health.failure, c.health.detail)
    if f.analysis_failure:
        return _fail(f, "AnalysisFailed", f.analysis_failure)
    progress = dict(f.progress)
    if not c.health.ready:
        progress.pop("healthySince", None)
        if _since(progress.get("startedAt"), f.now) > c.progress_deadline:
            return _fail(f, "ProgressDeadlineExceeded",
                         f"the canary was not ready within {c.progress_deadline}s "
                         f"({c.health.detail})")
        return Step("wait", RUNNING, "Progressing", f"waiting for the canary: {c.health.detail}",
                    progress)
    progress.setdefault("healthySince", format_time(f.now))
    healthy_for = _since(progress["healthySince"], f.now)
    if healthy_for < f.bake:
        # Messages name times, not durations, so a status write happens on a change only.
        return Step("wait", RUNNING, "Baking",
                    f"healthy since {progress['healthySince']}; bake {f.bake}s", progress)
    if not f.complete:
        return Step("wait", RUNNING, "WaitingForApprovals",
                    f"healthy since {progress['healthySince']} (bake {f.bake}s done); "
                    f"promotion waits for approvals ({f.approvals}/{f.required})", progress)
    progress["promotedAt"] = format_time(f.now)
    return Step("promote", PROMOTED, "Promoting",
                f"healthy for {int(healthy_for)}s with {f.approvals}/{f.required} approvals: "
                "applying the manifest to the Deployment", progress)


def _promoted(f: Facts) -> Step:
    if f.target_at_to:
        progress = {**f.progress, "endedAt": format_time(f.now)}
        return Step("finish", "Applied", "Promoted",
                    "the Deployment has toDigest; canary deleted", progress, "promoted")
    # Past the decision to promote, only what makes the write impossible stops it: the
    # canary's health no longer matters (it is about to be deleted).
    if f.deleted:
        return _fail(f, "ApprovalDeleted", "the approval was deleted before the promotion "
                                           "landed")
    if f.aborted:
        return _fail(f, "Aborted", f"aborted before the promotion landed: {f.aborted}")
    if f.expired:
        return _fail(f, "ApprovalExpired", "the approval expired before the promotion landed")
    if f.used:
        return _fail(f, "ApprovalUsed", f.used)
    if not f.target_at_from:
        return _fail(f, "TargetChanged", "the Deployment moved away from fromDigest before "
                                         "the promotion landed")
    return Step("promote", PROMOTED, "Promoting", "applying the manifest to the Deployment",
                f.progress)
