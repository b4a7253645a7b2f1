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

from changegate.core import canary, guards
from changegate.core.approval import (
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
from changegate.core.budget import MAX_VERIFICATIONS, Budget, BudgetExhausted
from changegate.core.digest import ABSENT, digest
from changegate.core.errors import NotCanonicalError
from changegate.core.names import BREAK_GLASS, GROUP, PLURAL
from changegate.core.policy import ExemptWriter, NamespaceSettings, Policy, namespace_settings
from changegate.core.reasons import ReasonCode
from changegate.core.review import AdmissionRequest
from changegate.core.senior import (
    automation_in_trust,
    automation_key,
    automation_users,
    declaration_problem,
    senior_problem,
)
from changegate.core.snapshot import ApprovalObject, NamespaceInfo, Snapshot
from changegate.core.trust import TrustStore
from changegate.core.verdict import Decision, Verdict

GATED = {("apps", "deployments"): "Deployment", ("", "configmaps"): "ConfigMap"}
SYSTEM_NAMESPACES = frozenset({"kube-system"})
# Bounded work (SPEC §5). Per target: the approvals that name this very change are
# looked at first, and an object changed a dozen times a day keeps ~300 used approvals for
# the 30-day retention, so 16 is room for every live one (rarely more than two) plus
# the most recent history for the explanation. Per record: a release of up to 64 objects
# goes in whole (a large Helm chart has 30-50); past that the record is refused as too
# large rather than verified without end.
MAX_APPROVALS_PER_TARGET = 16
MAX_APPROVALS_PER_RECORD = 64


@dataclass
class Context:
    """What the caller keeps across decisions: memos of watched approvals (never of a
    request body, SPEC §5) and the verification budget each decision gets."""

    memo: VerificationMemo = field(default_factory=VerificationMemo)
    manifests: dict[tuple[object, ...], str] = field(default_factory=dict)
    max_verifications: int = MAX_VERIFICATIONS


def decide(request: AdmissionRequest, snapshot: Snapshot, now: datetime,
           context: Context) -> Decision:
    verdict = _route(request, snapshot, now, context)
    return verdict.finish(request, snapshot)


def _route(req: AdmissionRequest, snap: Snapshot, now: datetime, ctx: Context) -> Verdict:
    if req.sub_resource == "status":
        return Verdict.allow(ReasonCode.NOT_GATED, "status is never intercepted")
    key = (req.resource_group, req.resource)
    if key == ("", "namespaces"):
        return guards.namespace_guard(req, snap)
    if req.namespace == snap.process.namespace and key == ("", "configmaps"):
        return guards.config_guard(req, snap)
    if req.namespace in SYSTEM_NAMESPACES or req.namespace == snap.process.namespace:
        return Verdict.allow(ReasonCode.NOT_GATED, "system or controller namespace")
    if key == (GROUP, PLURAL):
        return guards.approval_object(req, snap, now, Budget(ctx.max_verifications))
    if key == ("apps", "deployments") and req.sub_resource == "scale":
        return guards.scale_guard(req, snap)
    kind = GATED.get(key)
    if kind is None or req.sub_resource:
        return Verdict.allow(ReasonCode.NOT_GATED, f"{req.resource} is not gated")
    return _gated(req, snap, now, ctx, kind)


def _digest(obj: dict[str, Any] | None, policy: Policy, autoscaled: bool) -> str:
    """Digest of ``obj``, computed afresh for every request: never remembered by the
    object's uid and resourceVersion, which the request body states and any pod that can
    reach the webhook can forge (SPEC §5); the digest costs microseconds."""
    if obj is None:
        return ABSENT
    return digest(obj, policy.view_rules, autoscaled=autoscaled)


@dataclass(frozen=True, kw_only=True, slots=True)
class NamespaceGate:
    """What one snapshot says about one namespace, for every gated write into it."""

    tier1: bool
    terminating: bool
    settings: NamespaceSettings
    warnings: tuple[str, ...]  # ignored annotation values; too few eligible approvers
    exempt: tuple[ExemptWriter, ...]  # built-in, then the policy's


def namespace_gate(ns: NamespaceInfo, policy: Policy, trust: TrustStore) -> NamespaceGate:
    settings = namespace_settings(policy, dict(ns.annotations))
    warnings = [f"changegate: {n}" for n in settings.notes]
    eligible = trust.eligible_approvers(
        ns.name, allow_service_accounts=policy.allowServiceAccountApprovers,
        automation=automation_users(policy))
    # SPEC §6a: an automation identity's trust-store entry is ignored, and says so.
    warnings.extend(f"changegate: trust-store approver {name} is an automation identity "
                    "(policy automation) and is ignored as an approver"
                    for name in automation_in_trust(policy, trust, ns.name))
    if len(eligible) < settings.required_approvals:
        warnings.append(f"changegate: namespace {ns.name} has {len(eligible)} eligible "
                        f"approvers; {settings.required_approvals} are required")
    return NamespaceGate(tier1=policy.selects(dict(ns.labels)), terminating=ns.terminating,
                         settings=settings, warnings=tuple(warnings),
                         exempt=(*guards.built_in_exempt(), *policy.exemptWriters))


def _gated(req: AdmissionRequest, snap: Snapshot, now: datetime, ctx: Context,
           kind: str) -> Verdict:
    if snap.config_error:
        return Verdict.deny(ReasonCode.CONFIG_INVALID,
                            f"configuration invalid: {snap.config_error}")
    policy, trust = snap.policy, snap.trust
    assert policy is not None and trust is not None  # config_error covers both
    ns = snap.namespace(req.namespace)
    if ns is None:
        return Verdict.deny(ReasonCode.NAMESPACE_UNKNOWN,
                            f"namespace {req.namespace} is not known to "
                            "the webhook yet; its gate cannot be judged (retry shortly)")
    gate = namespace_gate(ns, policy, trust)
    if not gate.tier1:
        return Verdict.allow(ReasonCode.NOT_GATED, f"namespace {req.namespace} is not tier-1")
    if req.operation not in policy.gatedOperations:
        return Verdict.allow(ReasonCode.NOT_GATED, f"{req.operation} is not gated by the policy")
    settings = gate.settings
    verdict = Verdict(kind=kind, settings=settings)
    verdict.warnings.extend(gate.warnings)
    if req.operation == "DELETE" and gate.terminating:
        return verdict.set_allow(ReasonCode.NAMESPACE_TERMINATING, "the namespace is being deleted")
    for writer in gate.exempt:
        if writer.matches(req.username, req.groups, kind, req.namespace, req.name):
            return verdict.set_allow(ReasonCode.EXEMPT_WRITER,
                                     f"{req.username} is an exempt writer "
                                     f"of {kind} {req.name}")
    autoscaled = kind == "Deployment" and snap.is_autoscaled(req.namespace, req.name)
    scale_down = autoscaled and guards.replicas_decrease(req) and (
        req.username not in policy.scaleExemptUsers)
    try:
        old = verdict.from_digest = _digest(req.old_object, policy, autoscaled)
        new = verdict.to_digest = _digest(req.object, policy, autoscaled)
    except NotCanonicalError as exc:
        unreadable: NotCanonicalError | None = exc
    else:
        unreadable = None
        if old == new and req.operation == "UPDATE" and not scale_down:
            # Nothing the digest covers changes: no break-glass either (a reason added
            # alone changes nothing under it).
            return verdict.set_allow(ReasonCode.NO_CHANGE, "the change does not touch the approved "
                                                  "state")
    if guards.is_break_glass(req, snap):
        # Before anything that fails on the object (SPEC §5): a live object whose view
        # cannot be digested (an integer beyond 2^53) still takes a break-glass fix.
        verdict.break_glass = True
        reason = str((req.object or {}).get("metadata", {}).get("annotations", {})
                     .get(BREAK_GLASS, ""))
        verdict.warnings.append(f"changegate: BREAK-GLASS by {req.username}: {reason[:120]}"
                                " (recorded; a review is owed)")
        return verdict.set_allow(ReasonCode.BREAK_GLASS, f"break-glass: {reason}")
    if unreadable is not None:
        return verdict.set_deny(ReasonCode.NOT_CANONICAL, str(unreadable))
    if policy.is_automation(req.username, req.groups) and guards.carries_break_glass(req):
        verdict.warnings.append(f"changegate: {req.username} is an automation identity: "
                                "break-glass is not for automation (SPEC §6a); an approval "
                                "is needed")
    if scale_down:
        return verdict.set_deny(ReasonCode.SCALE_DOWN, guards.SCALE_DOWN_HELP)
    if kind == "Deployment" and settings.mode == "canary":
        if canary.base_name(req.name) is not None:
            return _canary_object(req, snap, now, ctx, verdict, policy, settings)
        if req.username != snap.process.operator_service_account:
            return verdict.set_deny(ReasonCode.CANARY_REQUIRED, CANARY_PATH)
    if req.object is not None:
        tags = guards.tag_only_images(req.object)
        if tags and policy.requireImageDigests:
            return verdict.set_deny(ReasonCode.IMAGE_NOT_PINNED,
                                    "images must be pinned by digest (@sha256:...): "
                                    + ", ".join(tags))
        verdict.image_tags = tags
    change = Change(api_version=req.api_version, kind=kind, namespace=req.namespace,
                    name=req.name, uid=req.live_uid, operation=req.operation,
                    from_digest=old, to_digest=new, applier=req.username)
    search = _Search(snap=snap, policy=policy, settings=settings, now=now, ctx=ctx,
                     budget=Budget(ctx.max_verifications), groups=req.groups)
    try:
        winner, fits = search.find(change, autoscaled)
    except BudgetExhausted:
        verdict.signature_results = search.results()
        return verdict.set_deny(ReasonCode.DEADLINE_EXCEEDED, (
            f"verifying the approvals for this change would pass the webhook's deadline "
            f"(more than {ctx.max_verifications} signature checks); nothing was admitted. "
            "Too many signed ChangeApprovals name this object or its change record: "
            "delete the stale ones"))
    verdict.signature_results = search.results()
    if winner is not None and kind == "Deployment" and settings.mode == "canary":
        held = _promotion_held(winner, snap, req.namespace)
        if held:
            return verdict.set_deny(ReasonCode.CANARY_REQUIRED, held)
    if winner is not None:
        verdict.approval, verdict.approvers = winner.approval, winner.approvers
        verdict.record, verdict.nonce = winner.record, winner.nonce
        verdict.approvals = len(winner.approvers)
        return verdict.set_allow(ReasonCode.APPROVED,
                                 f"approved by {', '.join(sorted(winner.approvers))} "
                                 f"under {winner.record}")
    closest = best(fits)
    restart = guards.is_restart_only(req, policy)
    if restart and policy.restartWriters.includes(req.username, req.groups):
        return verdict.set_allow(ReasonCode.RESTART, "a restart of the approved template")
    if closest is not None and not (restart and closest.names_another_change):
        verdict.approval, verdict.record = closest.approval, closest.record
        verdict.approvals = len(closest.approvers)
        first = closest.problems[0]
        verdict.set_deny(ReasonCode(first.code), first.detail)
        verdict.extra = closest.problems[1:]
    elif restart:
        verdict.set_deny(ReasonCode.RESTART_UNAPPROVED, guards.RESTART_HELP.format(name=req.name))
    else:
        verdict.set_deny(ReasonCode.NO_APPROVAL,
                         "no ChangeApproval in this namespace names this change")
    return verdict


@dataclass(kw_only=True)
class _Search:
    """The approvals one gated request looks at, with the work it may spend on them."""

    snap: Snapshot
    policy: Policy
    settings: NamespaceSettings
    now: datetime
    ctx: Context
    budget: Budget
    groups: frozenset[str]  # of the user applying the change (SPEC §6a automation)
    verified: list[VerifiedApproval] = field(default_factory=list)

    def results(self) -> tuple[str, ...]:
        return tuple(r for v in self.verified for r in v.signature_results)

    def find(self, change: Change, autoscaled: bool) -> tuple[Fit | None, list[Fit]]:
        mine = [o for o in self.snap.approvals_in(change.namespace)
                if o.target_key == (change.kind, change.name)]
        # Those whose (unverified) spec names this very change first, then the live ones,
        # then the most signed: a pile of unsigned approvals naming the change (anyone who
        # may create one can make them) never pushes the signed one past the cap, since
        # the door admits no signature that does not verify.
        mine.sort(key=lambda o: (not _names(o, change), o.phase in ("Applied", "Expired"),
                                 -_signature_count(o)))
        fits: list[Fit] = []
        for obj in mine[:MAX_APPROVALS_PER_TARGET]:
            verified = self._verify(obj)
            result = self._fit(obj, verified, change)
            _add_senior_rules(result, verified, change.applier, self.groups, self.snap,
                              self.policy)
            if result.ok and change.operation != "DELETE":
                got = self._manifest_digest(obj, autoscaled)
                if got != change.to_digest:
                    result.problems.append(Problem(
                        ReasonCode.MANIFEST_MISMATCH,
                        f"approval {obj.name}'s manifest is not what it signed"))
            if result.ok and self.policy.atomicRecords:
                held = self._record_holds(obj, result, change.applier)
                if held:
                    result.problems.append(Problem(ReasonCode.RECORD_INCOMPLETE, held))
            fits.append(result)
            if result.ok:
                return result, fits
        return None, fits

    def _verify(self, obj: ApprovalObject) -> VerifiedApproval:
        trust, allow_sa = self.snap.trust, self.policy.allowServiceAccountApprovers
        assert trust is not None
        key = (obj.namespace, obj.content_key, trust.version, str(allow_sa),
               automation_key(self.policy))
        found = self.ctx.memo.get(key) if obj.content_key else None
        if found is None:
            found = verify_approval(obj.namespace, obj.spec, trust,
                                    allow_service_accounts=allow_sa,
                                    automation=automation_users(self.policy),
                                    budget=self.budget)
            if obj.content_key:
                self.ctx.memo.put(key, found)
        self.verified.append(found)
        return found

    def _fit(self, obj: ApprovalObject, verified: VerifiedApproval, change: Change) -> Fit:
        policy = self.policy
        return fit(verified, change, cluster=policy.clusterName, now=self.now,
                   max_lifetime=policy.maxApprovalLifetime,
                   record_pattern=policy.changeRecordPattern,
                   required=self.settings.required_approvals, used=self.snap.ledger,
                   phase=obj.phase, name=obj.name)

    def _manifest_digest(self, obj: ApprovalObject, autoscaled: bool) -> str | None:
        """Memoized per watched approval version and the view rules' own content."""
        policy = self.policy
        if not (obj.uid and obj.resource_version):
            return manifest_digest(obj.spec, policy.view_rules, autoscaled)
        key = (obj.namespace, obj.name, obj.uid, obj.resource_version,
               policy.ignoredAnnotations, policy.ignoredLabels, autoscaled)
        found = self.ctx.manifests.get(key)
        if found is None:
            if len(self.ctx.manifests) > 50_000:
                self.ctx.manifests.clear()
            found = manifest_digest(obj.spec, policy.view_rules, autoscaled) or ""
            self.ctx.manifests[key] = found
        return found or None

    def _record_holds(self, winner: ApprovalObject, result: Fit, applier: str) -> str:
        """SPEC §4 rule 6: a release goes in whole. Names the first sibling that is not
        ready; siblings are the same record AND the same requester (a stranger's
        ChangeApproval under your record id holds nothing of yours)."""
        record, requester = result.record, str(winner.spec.get("requestedBy", ""))
        siblings = [o for o in self.snap.approvals_in(winner.namespace)
                    if o.record_id == record and str(o.spec.get("requestedBy", "")) == requester
                    and not (o.uid == winner.uid and o.name == winner.name)]
        if len(siblings) >= MAX_APPROVALS_PER_RECORD:
            return (f"change record {record} has more than {MAX_APPROVALS_PER_RECORD} "
                    "ChangeApprovals; changegate judges a release of at most that many")
        for other in siblings:
            verified = self._verify(other)
            st = verified.statement
            if st is not None and st.predicate.nonce in self.snap.ledger:
                continue  # already used: that part of the release is in
            if st is None or st.predicate.requestedBy != requester:
                return f"{other.name} under the same change record {record} is not valid yet"
            problems: list[Problem] = [q for q in verified.problems
                                       if q.code in ("statement_invalid",
                                                     "spec_statement_mismatch")]
            add_time_problems(st, self.now, self.policy.maxApprovalLifetime, problems.append)
            required = self.settings.required_approvals
            if len(verified.approvers) < required:
                problems.append(Problem(ReasonCode.APPROVALS_INSUFFICIENT,
                                        f"{len(verified.approvers)}/{required}"))
            assert self.snap.trust is not None
            extra = [declaration_problem(self.policy, st),
                     senior_problem(self.policy, self.snap.trust, st,
                                    verified.approvers - {applier}, applier=applier,
                                    groups=self.groups)]
            problems.extend(q for q in extra if q is not None)
            if problems:
                return (f"{other.name} under the same change record {record} is not complete "
                        f"({problems[0].detail}); the release goes in whole or not at all")
        return ""


def _signature_count(obj: ApprovalObject) -> int:
    signatures = obj.spec.get("signatures")
    return len(signatures) if isinstance(signatures, list) else 0


def _names(obj: ApprovalObject, change: Change) -> bool:
    """Whether the ChangeApproval's spec (not yet verified) names exactly this change."""
    spec = obj.spec
    target = spec.get("target")
    return (spec.get("operation") == change.operation
            and spec.get("fromDigest") == change.from_digest
            and spec.get("toDigest") == change.to_digest
            and isinstance(target, dict) and target.get("uid") == change.uid)


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


# --- the canary gate (SPEC §7) ---------------------------------------------------------

CANARY_PATH = (guards.CANARY_HELP + ": request the change with a canary (changegate request "
               "--canary); once canaryMinApprovals approvers signed, the operator runs "
               "<name>-canary at the proposed template, and promotes it when the canary stayed "
               "healthy for its bake and every approval is in")
HELD, OK, NONE = ReasonCode.CANARY_REQUIRED, ReasonCode.APPROVED, ReasonCode.NO_APPROVAL
GC_USERS = frozenset({"system:serviceaccount:kube-system:generic-garbage-collector",
                      "system:kube-controller-manager"})


def _promotion_held(winner: Fit, snap: Snapshot, namespace: str) -> str:
    """In a canary namespace the operator's own write is admitted only as the promotion of
    a canary that passed. ``Promoted`` is status, which only the operator writes: here it
    can only hold a change back, never admit one (the approval check above still rules)."""
    obj = next((o for o in snap.approvals_in(namespace) if o.name == winner.approval), None)
    strategy = (obj.spec.get("rollout") or {}).get("strategy") if obj else None
    if strategy != "canary":
        return (f"approval {winner.approval} has no canary rollout; " + CANARY_PATH)
    if obj is None or obj.phase != canary.PROMOTED:
        return (f"approval {winner.approval}'s canary has not passed (phase "
                f"{obj.phase if obj else '?'}, not Promoted)")
    return ""


def _canary_object(req: AdmissionRequest, snap: Snapshot, now: datetime, ctx: Context,
                   verdict: Verdict, policy: Policy, settings: NamespaceSettings) -> Verdict:
    """``<name>-canary`` in a canary namespace: created and deleted only by the operator,
    only for the ChangeApproval that owns it (ownerReference uid, never a label), and
    created only exactly as that approval's manifest asks."""
    name = f"Deployment {req.namespace}/{req.name}"
    operator = snap.process.operator_service_account
    if req.operation == "DELETE":
        owner = canary.owner_uid(req.old_object)
        if owner is None:
            return verdict.set_deny(HELD, f"{name} is not a canary that a "
                                    "ChangeApproval owns; names ending in -canary are "
                                    "reserved for canaries in a canary namespace")
        if req.username == operator:
            return verdict.set_allow(OK, f"the operator deletes the canary {name}")
        alive = any(o.uid == owner for o in snap.approvals_in(req.namespace))
        if req.username in GC_USERS and not alive:
            return verdict.set_allow(OK, f"its ChangeApproval is gone: {name} goes too")
        return verdict.set_deny(HELD, f"only the changegate operator deletes the "
                                f"canary {name}; to stop it: changegate canary abort <approval>")
    if req.operation != "CREATE" or req.username != operator:
        return verdict.set_deny(HELD, f"only the changegate operator creates a "
                                f"canary, and nobody changes one in place ({name}); "
                                + CANARY_PATH)
    base = canary.base_name(req.name) or ""
    owner = canary.owner_uid(req.object)
    obj = next((o for o in snap.approvals_in(req.namespace)
                if o.uid == owner and o.target_key == ("Deployment", base)), None)
    if obj is None:
        return verdict.set_deny(NONE, f"{name} is not owned by a ChangeApproval for "
                                               f"Deployment {base}")
    if obj.phase in (canary.FAILED, "Applied", "Expired", "Rejected"):
        # Status only holds back: a run that ended never starts again.
        return verdict.set_deny(HELD, f"approval {obj.name} is {obj.phase}: its canary run "
                                      "has ended")
    search = _Search(snap=snap, policy=policy, settings=settings, now=now, ctx=ctx,
                     budget=Budget(ctx.max_verifications), groups=req.groups)
    try:
        verified = search._verify(obj)
    except BudgetExhausted:
        return verdict.set_deny(ReasonCode.DEADLINE_EXCEEDED, "verifying the canary's "
                                "approval would pass the webhook's deadline")
    st = verified.statement or verified.unverified  # fit() below requires the signatures
    if st is None or st.predicate.rollout.strategy != "canary":
        return verdict.set_deny(HELD, f"approval {obj.name} is not a verified "
                                                   "canary rollout")
    p = st.predicate
    change = Change(api_version=p.target.apiVersion, kind="Deployment", namespace=req.namespace,
                    name=base, uid=p.target.uid, operation="UPDATE", from_digest=p.fromDigest,
                    to_digest=p.toDigest, applier=req.username)
    result = fit(verified, change, cluster=policy.clusterName, now=now,
                 max_lifetime=policy.maxApprovalLifetime,
                 record_pattern=policy.changeRecordPattern,
                 required=policy.canaryMinApprovals, used=snap.ledger, phase=obj.phase,
                 name=obj.name)
    autoscaled = snap.is_autoscaled(req.namespace, base)
    if result.ok and search._manifest_digest(obj, autoscaled) != p.toDigest:
        result.problems.append(Problem(ReasonCode.MANIFEST_MISMATCH,
                                       f"approval {obj.name}'s manifest is not what it signed"))
    verdict.approval, verdict.record, verdict.approvals = obj.name, result.record, len(
        result.approvers)
    if not result.ok:
        first = result.problems[0]
        return verdict.set_deny(ReasonCode(first.code), f"no canary yet: {first.detail}")
    manifest = obj.spec.get("manifest")
    expected = canary.build_canary(manifest if isinstance(manifest, dict) else {}, obj.name,
                                   obj.uid, canary.replicas_for(st, policy))
    wrong = canary.same_canary(req.object or {}, expected)
    if wrong:
        return verdict.set_deny(HELD, f"{name} differs from what approval "
                                f"{obj.name} asks for: {', '.join(wrong)}")
    verdict.approvers = result.approvers
    return verdict.set_allow(OK, f"canary for approval {obj.name}, approved so far by "
                                         f"{', '.join(sorted(result.approvers))}")
