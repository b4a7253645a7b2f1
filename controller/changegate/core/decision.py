"""decide(): the webhook's whole judgement of one AdmissionRequest, pure and deterministic.

Routing by resource: gated objects (Deployments, ConfigMaps) -> approvals; ChangeApprovals
-> their own admission rules; Namespaces -> the namespace guard; deployments/scale -> the
scale guard; the controller's own ConfigMaps -> the config guard. Time arrives as ``now``;
nothing here does I/O, so `changegate check` reproduces any webhook answer offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from changegate.core import guards
from changegate.core.approval import (
    UNCOUNTED,
    Change,
    Fit,
    Problem,
    VerificationMemo,
    VerifiedApproval,
    add_time_problems,
    best,
    fit,
    manifest_digest,
    verify_approval,
)
from changegate.core.digest import ABSENT, digest
from changegate.core.errors import NotCanonicalError
from changegate.core.policy import ExemptWriter, NamespaceSettings, Policy, namespace_settings
from changegate.core.review import AdmissionRequest
from changegate.core.senior import (
    automation_in_trust,
    automation_key,
    automation_users,
    declaration_problem,
    senior_problem,
)
from changegate.core.snapshot import ApprovalObject, Snapshot
from changegate.core.trust import TrustStore
from changegate.core.verdict import Decision, Verdict

BREAK_GLASS = "changegate.io/break-glass"
GATED = {("apps", "deployments"): "Deployment", ("", "configmaps"): "ConfigMap"}
SYSTEM_NAMESPACES = frozenset({"kube-system"})


@dataclass
class Context:
    """Memos that survive across calls, filled only from the snapshot's ChangeApprovals
    (watched state), never from a request body (SPEC §5)."""

    memo: VerificationMemo = field(default_factory=VerificationMemo)
    digests: dict[tuple[object, ...], str] = field(default_factory=dict)


_DEFAULT_CONTEXT = Context()


def decide(request: AdmissionRequest, snapshot: Snapshot, now: datetime,
           context: Context | None = None) -> Decision:
    ctx = context or _DEFAULT_CONTEXT
    verdict = _route(request, snapshot, now, ctx)
    return verdict.finish(request, snapshot)


def _route(req: AdmissionRequest, snap: Snapshot, now: datetime, ctx: Context) -> Verdict:
    if req.sub_resource == "status":
        return Verdict.allow("not_gated", "status is never intercepted")
    key = (req.resource_group, req.resource)
    if key == ("", "namespaces"):
        return guards.namespace_guard(req, snap)
    if req.namespace == snap.process.namespace and key == ("", "configmaps"):
        return guards.config_guard(req, snap)
    if req.namespace in SYSTEM_NAMESPACES or req.namespace == snap.process.namespace:
        return Verdict.allow("not_gated", "system or controller namespace")
    if key == ("changegate.io", "changeapprovals"):
        return guards.approval_object(req, snap, now, ctx.memo)
    if key == ("apps", "deployments") and req.sub_resource == "scale":
        return guards.scale_guard(req, snap)
    kind = GATED.get(key)
    if kind is None or req.sub_resource:
        return Verdict.allow("not_gated", f"{req.resource} is not gated")
    return _gated(req, snap, now, ctx, kind)


def _digest(obj: dict[str, Any] | None, policy: Policy, autoscaled: bool) -> str:
    """Digest of ``obj``, computed afresh for every request: never remembered by the
    object's uid and resourceVersion, which the request body states and any pod that can
    reach the webhook can forge (SPEC §5); the digest costs microseconds."""
    if obj is None:
        return ABSENT
    return digest(obj, policy.view_rules, autoscaled=autoscaled)


@dataclass(frozen=True, slots=True)
class NamespaceGate:
    """What one snapshot says about one namespace, for every gated write into it."""

    tier1: bool
    terminating: bool
    settings: NamespaceSettings
    warnings: tuple[str, ...]  # ignored annotation values; too few eligible approvers
    exempt: tuple[ExemptWriter, ...]  # built-in, then the policy's


MEMO_LIMIT = 10_000  # namespaces remembered per snapshot; a new snapshot starts afresh


def namespace_gate(snap: Snapshot, policy: Policy, trust: TrustStore,
                   namespace: str) -> NamespaceGate:
    """Memoized in the snapshot: its labels, annotations, policy and trust store are fixed."""
    key = ("gate", namespace)
    gate: NamespaceGate | None = snap.memo.get(key)
    if gate is None:
        ns = snap.namespace(namespace)
        settings = namespace_settings(policy, dict(ns.annotations))
        warnings = [f"changegate: {n}" for n in settings.notes]
        eligible = trust.eligible_approvers(
            namespace, allow_service_accounts=policy.allowServiceAccountApprovers,
            automation=automation_users(policy))
        # SPEC §6a: an automation identity's trust-store entry is ignored, and says so.
        warnings.extend(f"changegate: trust-store approver {name} is an automation identity "
                        "(policy automation) and is ignored as an approver"
                        for name in automation_in_trust(policy, trust, namespace))
        if len(eligible) < settings.required_approvals:
            warnings.append(f"changegate: namespace {namespace} has {len(eligible)} eligible "
                            f"approvers; {settings.required_approvals} are required")
        gate = NamespaceGate(policy.selects(dict(ns.labels)), ns.terminating, settings,
                             tuple(warnings), (*guards.built_in_exempt(), *policy.exemptWriters))
        if len(snap.memo) > MEMO_LIMIT:
            snap.memo.clear()
        snap.memo[key] = gate
    return gate


def _gated(req: AdmissionRequest, snap: Snapshot, now: datetime, ctx: Context,
           kind: str) -> Verdict:
    if snap.config_error:
        return Verdict.deny("config_invalid", f"configuration invalid: {snap.config_error}")
    policy, trust = snap.policy, snap.trust
    assert policy is not None and trust is not None  # config_error covers both
    gate = namespace_gate(snap, policy, trust, req.namespace)
    if not gate.tier1:
        return Verdict.allow("not_gated", f"namespace {req.namespace} is not tier-1")
    if req.operation not in policy.gatedOperations:
        return Verdict.allow("not_gated", f"{req.operation} is not gated by the policy")
    settings = gate.settings
    verdict = Verdict(kind=kind, settings=settings)
    verdict.warnings.extend(gate.warnings)
    if req.operation == "DELETE" and gate.terminating:
        return verdict.set_allow("namespace_terminating", "the namespace is being deleted")
    for writer in gate.exempt:
        if writer.matches(req.username, req.groups, kind, req.namespace, req.name):
            return verdict.set_allow("exempt_writer", f"{req.username} is an exempt writer "
                                                      f"of {kind} {req.name}")
    autoscaled = kind == "Deployment" and snap.is_autoscaled(req.namespace, req.name)
    try:
        old = _digest(req.old_object, policy, autoscaled)
        new = _digest(req.object, policy, autoscaled)
    except NotCanonicalError as exc:
        return verdict.set_deny("not_canonical", str(exc))
    verdict.from_digest, verdict.to_digest = old, new
    scale_down = autoscaled and guards.replicas_decrease(req) and (
        req.username not in policy.scaleExemptUsers)
    if old == new and req.operation == "UPDATE" and not scale_down:
        return verdict.set_allow("no_change", "the change does not touch the approved state")
    if guards.is_break_glass(req, snap):
        verdict.break_glass = True
        reason = str((req.object or {}).get("metadata", {}).get("annotations", {})
                     .get(BREAK_GLASS, ""))
        verdict.warnings.append(f"changegate: BREAK-GLASS by {req.username}: {reason[:120]}"
                                " (recorded; a review is owed)")
        return verdict.set_allow("break_glass", f"break-glass: {reason}")
    if policy.is_automation(req.username, req.groups) and guards.carries_break_glass(req):
        verdict.warnings.append(f"changegate: {req.username} is an automation identity: "
                                "break-glass is not for automation (SPEC §6a); an approval "
                                "is needed")
    if scale_down:
        return verdict.set_deny("scale_down", guards.SCALE_DOWN_HELP)
    if kind == "Deployment" and settings.mode == "canary" and (
            req.username != snap.process.operator_service_account):
        return verdict.set_deny("canary_required", guards.CANARY_HELP)
    if req.object is not None:
        tags = guards.tag_only_images(req.object)
        if tags and policy.requireImageDigests:
            return verdict.set_deny("image_not_pinned",
                                    "images must be pinned by digest (@sha256:...): "
                                    + ", ".join(tags))
        verdict.image_tags = tags
    change = Change(api_version=req.api_version, kind=kind, namespace=req.namespace,
                    name=req.name, uid=req.live_uid, operation=req.operation,
                    from_digest=old, to_digest=new, applier=req.username)
    winner, fits = _find_approval(change, req.groups, snap, policy, settings, now, ctx,
                                  autoscaled)
    verdict.signature_results = tuple(r for f in fits for r in f[1].signature_results)
    if winner is not None:
        verdict.approval, verdict.approvers = winner.approval, winner.approvers
        verdict.record, verdict.nonce = winner.record, winner.nonce
        verdict.approvals = len(winner.approvers)
        return verdict.set_allow("approved", f"approved by {', '.join(sorted(winner.approvers))} "
                                             f"under {winner.record}")
    closest = best(f for f, _ in fits)
    if closest is not None:
        verdict.approval, verdict.record = closest.approval, closest.record
        verdict.approvals = len(closest.approvers)
        first = closest.problems[0]
        verdict.set_deny(first.code, first.detail)
        verdict.extra = [q for q in closest.problems[1:]]
    elif guards.is_restart_only(req, policy):
        if policy.restartWriters.includes(req.username, req.groups):
            return verdict.set_allow("restart", "a restart of the approved template")
        verdict.set_deny("restart_unapproved", guards.RESTART_HELP.format(name=req.name))
    else:
        verdict.set_deny("no_approval", "no ChangeApproval in this namespace names this change")
    return verdict


def _find_approval(change: Change, groups: frozenset[str], snap: Snapshot, policy: Policy,
                   settings: NamespaceSettings, now: datetime, ctx: Context, autoscaled: bool
                   ) -> tuple[Fit | None, list[tuple[Fit, VerifiedApproval]]]:
    fits: list[tuple[Fit, VerifiedApproval]] = []
    for obj in snap.approvals_in(change.namespace):
        if obj.target_key != (change.kind, change.name):
            continue
        verified = _verified(obj, snap, policy, ctx)
        result = _fit(obj, verified, change, snap, policy, settings, now)
        _add_senior_rules(result, verified, change.applier, groups, snap, policy)
        if result.ok and change.operation != "DELETE":
            got = _manifest_digest(obj, policy, autoscaled, ctx)
            if got != change.to_digest:
                result.problems.append(Problem(
                    "manifest_mismatch", f"approval {obj.name}'s manifest is not what it signed"))
        if result.ok and policy.atomicRecords:
            held = _record_holds(obj, result.record, snap, policy, settings, now, ctx,
                                 change.applier, groups)
            if held:
                result.problems.append(Problem("record_incomplete", held))
        fits.append((result, verified))
        if result.ok:
            return result, fits
    return None, fits


def _manifest_digest(obj: ApprovalObject, policy: Policy, autoscaled: bool, ctx: Context
                     ) -> str | None:
    """Memoized per approval version: the manifest cannot change under a resourceVersion."""
    key = ("manifest", obj.uid, obj.resource_version, id(policy.view_rules), autoscaled)
    if not (obj.uid and obj.resource_version):
        return manifest_digest(obj.spec, policy.view_rules, autoscaled)
    found = ctx.digests.get(key)
    if found is None:
        found = manifest_digest(obj.spec, policy.view_rules, autoscaled) or ""
        ctx.digests[key] = found
    return found or None


def _verified(obj: ApprovalObject, snap: Snapshot, policy: Policy, ctx: Context
              ) -> VerifiedApproval:
    assert snap.trust is not None
    key = (obj.namespace, obj.name, obj.uid, obj.resource_version, snap.trust.version,
           str(policy.allowServiceAccountApprovers), automation_key(policy))
    cacheable = bool(obj.uid and obj.resource_version)
    found = ctx.memo.get(key) if cacheable else None
    if found is None:
        found = verify_approval(obj.namespace, obj.spec, snap.trust,
                                allow_service_accounts=policy.allowServiceAccountApprovers,
                                automation=automation_users(policy))
        if cacheable:
            ctx.memo.put(key, found)
    return found


def _fit(obj: ApprovalObject, verified: VerifiedApproval, change: Change, snap: Snapshot,
         policy: Policy, settings: NamespaceSettings, now: datetime) -> Fit:
    return fit(verified, change, cluster=policy.clusterName, now=now,
               max_lifetime=policy.maxApprovalLifetime, record_pattern=policy.changeRecordPattern,
               required=settings.required_approvals, used=snap.ledger, phase=obj.phase,
               name=obj.name)


def _add_senior_rules(result: Fit, verified: VerifiedApproval, applier: str,
                      groups: frozenset[str], snap: Snapshot, policy: Policy) -> None:
    """SPEC §6a on top of fit(): the declaration the policy may require, and the senior
    signature an AI-assisted or automation change needs among its counted approvers."""
    st = verified.statement
    if st is None or snap.trust is None:
        return
    declared = declaration_problem(policy, st)
    if declared is not None:
        result.problems.insert(0, declared)
    senior = senior_problem(policy, snap.trust, st, result.approvers, applier=applier,
                            groups=groups)
    if senior is not None:
        result.problems.append(senior)


def _record_holds(winner: ApprovalObject, record: str, snap: Snapshot, policy: Policy,
                  settings: NamespaceSettings, now: datetime, ctx: Context, applier: str,
                  groups: frozenset[str]) -> str:
    """SPEC §4 rule 6: a release goes in whole. Names the first sibling that is not ready."""
    for other in snap.approvals_in(winner.namespace):
        if (other.uid == winner.uid and other.name == winner.name) or other.record_id != record:
            continue
        verified = _verified(other, snap, policy, ctx)
        st = verified.statement
        if st is not None and st.predicate.nonce in snap.ledger:
            continue  # already used: that part of the release is in
        if st is None:
            return f"{other.name} under the same change record {record} is not valid yet"
        problems: list[Problem] = [q for q in verified.problems
                                   if q.code not in UNCOUNTED]
        add_time_problems(st, now, policy.maxApprovalLifetime, problems.append)
        if len(verified.approvers) < settings.required_approvals:
            problems.append(Problem("approvals_insufficient",
                                    f"{len(verified.approvers)}/{settings.required_approvals}"))
        assert snap.trust is not None
        extra = [declaration_problem(policy, st),
                 senior_problem(policy, snap.trust, st, verified.approvers - {applier},
                                applier=applier, groups=groups)]
        problems.extend(q for q in extra if q is not None)
        if problems:
            return (f"{other.name} under the same change record {record} is not complete "
                    f"({problems[0].detail}); the release goes in whole or not at all")
    return ""
