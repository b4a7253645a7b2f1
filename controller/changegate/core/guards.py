"""The guards around the gate (SPEC §4, §5): without them one `kubectl scale --replicas=0`,
one `kubectl label ns payments tier-` or one edited trust store walks around everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from changegate.core.approval import (
    MAX_SIGNATURES,
    decode_statement,
    manifest_digest,
    spec_mismatches,
    verify_approval,
)
from changegate.core.budget import Budget, BudgetExhausted
from changegate.core.digest import view
from changegate.core.dsse import PAYLOAD_TYPE, b64decode, pae
from changegate.core.errors import ChangeGateError, StatementError
from changegate.core.names import BREAK_GLASS
from changegate.core.policy import (
    BUILT_IN_EXEMPT,
    ENFORCEMENT_ANNOTATION,
    MODE_STRICTNESS,
    REQUIRED_APPROVALS_ANNOTATION,
    ExemptWriter,
    Policy,
    load_policy,
    namespace_settings,
    required_approvals_value,
)
from changegate.core.reasons import ReasonCode
from changegate.core.review import AdmissionRequest
from changegate.core.senior import declaration_problem
from changegate.core.snapshot import POLICY_KEY, TRUST_KEY, Snapshot
from changegate.core.statement import Statement, parse_statement
from changegate.core.trust import TrustStore, load_trust_store
from changegate.core.verdict import Verdict

MAX_MANIFEST_BYTES = 1024 * 1024
SCALE_DOWN_HELP = ("a scale-down of a tier-1 Deployment needs an approval: change spec.replicas "
                   "through changegate request (or use break-glass in an incident)")
CANARY_HELP = ("this namespace's enforcement is canary: a Deployment change reaches production "
               "only through a canary that the operator runs and promotes")
RESTART_HELP = ("`kubectl rollout restart` stamps the time when it runs, so no approval can name "
                "it; request the restart with a fixed time: changegate request --restart "
                "deployment/{name}, then changegate apply")


def built_in_exempt() -> tuple[ExemptWriter, ...]:
    return BUILT_IN_EXEMPT


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not obj:
        return {}
    return (obj.get("metadata") or {}).get("annotations") or {}


def admin_groups(snap: Snapshot) -> frozenset[str]:
    groups = set(snap.process.policy_admin_groups)
    if snap.policy is not None:
        groups.update(snap.policy.policyAdminGroups)
    return frozenset(groups)


def is_break_glass(req: AdmissionRequest, snap: Snapshot) -> bool:
    """A break-glass group member adding or changing the annotation (never one left as it was)."""
    groups = set(snap.process.break_glass_groups)
    if snap.policy is not None:
        groups.update(snap.policy.breakGlassGroups)
    if not req.groups.intersection(groups):
        return False
    if snap.policy is not None and snap.policy.is_automation(req.username, req.groups):
        return False  # SPEC §6a: automation never breaks glass, whatever its groups
    return carries_break_glass(req)


def carries_break_glass(req: AdmissionRequest) -> bool:
    """The write adds or changes a non-empty break-glass annotation."""
    new = _annotations(req.object).get(BREAK_GLASS)
    old = _annotations(req.old_object).get(BREAK_GLASS)
    return isinstance(new, str) and bool(new.strip()) and new != old


def _replicas(obj: Mapping[str, Any] | None) -> int | None:
    value = ((obj or {}).get("spec") or {}).get("replicas")
    return value if isinstance(value, int) else None


def replicas_decrease(req: AdmissionRequest) -> bool:
    """Whether replicas go down. An absent value is what the API server means by it: a
    Deployment defaults to 1, while autoscaling/v1 Scale omits 0 (`spec: {}` is zero)."""
    if req.operation != "UPDATE":
        return False
    absent = 0 if req.sub_resource == "scale" else 1
    old, new = _replicas(req.old_object), _replicas(req.object)
    return (new if new is not None else absent) < (old if old is not None else absent)


def tag_only_images(obj: Mapping[str, Any]) -> list[str]:
    pod = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {})
    images = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(key) or []:
            image = container.get("image") if isinstance(container, dict) else None
            if isinstance(image, str) and "@sha256:" not in image:
                images.append(image)
    return images


def _without_restart(obj: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    spec = dict(obj.get("spec") or {})
    template = dict(spec.get("template") or {})
    meta = dict(template.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in keys}
    template["metadata"] = meta
    spec["template"] = template
    return spec


def is_restart_only(req: AdmissionRequest, policy: Policy) -> bool:
    """An UPDATE whose only difference is a restart annotation of the pod template."""
    if req.operation != "UPDATE" or not req.object or not req.old_object:
        return False
    keys = policy.restartAnnotations
    new_template = ((req.object.get("spec") or {}).get("template") or {})
    old_template = ((req.old_object.get("spec") or {}).get("template") or {})
    touched = any((new_template.get("metadata") or {}).get("annotations", {}).get(k)
                  != (old_template.get("metadata") or {}).get("annotations", {}).get(k)
                  for k in keys)
    if not touched:
        return False
    rules = policy.view_rules
    old_view, new_view = view(req.old_object, rules), view(req.object, rules)
    return bool(_without_restart(old_view, keys) == _without_restart(new_view, keys)
                and old_view["metadata"] == new_view["metadata"])


def scale_guard(req: AdmissionRequest, snap: Snapshot) -> Verdict:
    if snap.config_error:
        return Verdict.deny(ReasonCode.CONFIG_INVALID,
                            f"configuration invalid: {snap.config_error}")
    policy = snap.policy
    assert policy is not None
    ns = snap.namespace(req.namespace)
    if ns is None:
        return Verdict.deny(ReasonCode.NAMESPACE_UNKNOWN,
                            f"namespace {req.namespace} is not known to "
                            "the webhook yet; its gate cannot be judged (retry shortly)")
    if not policy.selects(dict(ns.labels)):
        return Verdict.allow(ReasonCode.NOT_GATED, "namespace is not tier-1")
    if req.username in policy.scaleExemptUsers:
        return Verdict.allow(ReasonCode.SCALE_UP, f"{req.username} is an autoscaler identity")
    if not replicas_decrease(req):
        return Verdict.allow(ReasonCode.SCALE_UP, "not a scale-down")
    verdict = Verdict(kind="Deployment")
    return verdict.set_deny(ReasonCode.SCALE_DOWN, SCALE_DOWN_HELP)


def _loosened_namespace(policy: Policy, old: Mapping[str, Any], new: Mapping[str, Any] | None
                        ) -> str:
    """What makes this namespace change a loosening ('' when it is none)."""
    if new is None:
        return "deleting a tier-1 namespace"
    new_meta = new.get("metadata") or {}
    if not policy.selects(dict(new_meta.get("labels") or {})):
        return "the namespace would no longer match tierSelector"
    old_ann = dict((old.get("metadata") or {}).get("annotations") or {})
    new_ann = dict(new_meta.get("annotations") or {})
    before, after = namespace_settings(policy, old_ann), namespace_settings(policy, new_ann)
    if MODE_STRICTNESS[after.mode] < MODE_STRICTNESS[before.mode]:
        return f"{ENFORCEMENT_ANNOTATION} moves from {before.mode} to {after.mode}"
    if after.required_approvals < before.required_approvals:
        return (f"required approvals fall from {before.required_approvals} to "
                f"{after.required_approvals}")
    return ""


def _gate_metadata(obj: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The labels and changegate.io/ annotations: all a namespace's gate can depend on."""
    meta = (obj or {}).get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith("changegate.io/")}
    return meta.get("labels") or {}, annotations


def namespace_guard(req: AdmissionRequest, snap: Snapshot) -> Verdict:
    if req.operation not in ("UPDATE", "DELETE") or req.old_object is None:
        return Verdict.allow(ReasonCode.NOT_GATED,
                             "only updates and deletes of namespaces are guarded")
    new = None if req.operation == "DELETE" else req.object
    bad = _bad_required_approvals(req.old_object, new)
    if bad:
        return Verdict.deny(ReasonCode.NAMESPACE_GUARD, bad)
    policy = snap.policy
    if policy is None:
        # Unreadable policy: the tierSelector is unknown, so every change of the labels or
        # changegate.io/ annotations (and every delete) of a namespace the chart's
        # matchConditions sent us counts as loosening (SPEC §5).
        why = ("deleting a namespace" if new is None else
               "its labels or changegate.io/ annotations change" if
               _gate_metadata(req.old_object) != _gate_metadata(new) else "")
        why = why and f"{why} while the policy is unreadable ({snap.policy_error or 'missing'})"
    elif not policy.selects(dict((req.old_object.get("metadata") or {}).get("labels") or {})):
        return Verdict.allow(ReasonCode.NOT_GATED, "not a tier-1 namespace")
    else:
        why = _loosened_namespace(policy, req.old_object, new)
    if not why:
        return Verdict.allow(ReasonCode.NOT_GATED, "the change does not loosen the namespace")
    if req.groups.intersection(admin_groups(snap)):
        verdict = Verdict.allow(ReasonCode.POLICY_CHANGE, f"policy admin {req.username}: {why}")
        verdict.policy_change = True
        return verdict
    verdict = Verdict.deny(ReasonCode.NAMESPACE_GUARD, f"{why}; only policyAdminGroups may do that")
    verdict.policy_change = False
    return verdict


def _bad_required_approvals(old: Mapping[str, Any], new: Mapping[str, Any] | None) -> str:
    """A write that sets an unreadable required-approvals annotation is refused (SPEC §6);
    one that keeps or removes an existing bad value is not, so it can always be fixed."""
    new_value = _annotations(new).get(REQUIRED_APPROVALS_ANNOTATION)
    if new_value is None or new_value == _annotations(old).get(REQUIRED_APPROVALS_ANNOTATION):
        return ""
    if required_approvals_value(new_value) is not None:
        return ""
    return (f"{REQUIRED_APPROVALS_ANNOTATION}={str(new_value)[:40]!r} is not a number from "
            "1 to 16 in ASCII digits")


def _policy_loosened(old: Policy, new: Policy) -> bool:
    """A change that lets more through (a page), versus one that tightens (a ticket)."""
    o, n = old, new

    def grew(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return bool(set(b) - set(a))

    return any((
        MODE_STRICTNESS[n.enforcement] < MODE_STRICTNESS[o.enforcement],
        n.requiredApprovals < o.requiredApprovals,
        grew(n.gatedOperations, o.gatedOperations),  # an operation dropped from the gate
        n.tierSelector != o.tierSelector,
        n.clusterName != o.clusterName,
        n.changeRecordPattern != o.changeRecordPattern,
        n.maxApprovalLifetime > o.maxApprovalLifetime,
        grew(o.breakGlassGroups, n.breakGlassGroups),
        grew(o.trustedCreators, n.trustedCreators),
        grew(o.policyAdminGroups, n.policyAdminGroups),
        grew(o.scaleExemptUsers, n.scaleExemptUsers),
        grew(o.ignoredAnnotations, n.ignoredAnnotations),
        grew(o.ignoredLabels, n.ignoredLabels),
        grew(o.autoscaled, n.autoscaled),
        grew(o.exemptWriters, n.exemptWriters),
        grew(o.restartWriters.users + o.restartWriters.groups,
             n.restartWriters.users + n.restartWriters.groups),
        grew(o.restartAnnotations, n.restartAnnotations),
        o.dryRun == "enforce" and n.dryRun == "warn",
        o.requireImageDigests and not n.requireImageDigests,
        n.allowServiceAccountApprovers and not o.allowServiceAccountApprovers,
        o.atomicRecords and not n.atomicRecords,
        n.maxCanaryReplicas > o.maxCanaryReplicas,
        n.canaryMinApprovals < o.canaryMinApprovals,
        # SPEC §6a: fewer identities held to a senior signature, fewer seniors asked for.
        grew(n.automation.users + n.automation.groups,
             o.automation.users + o.automation.groups),
        n.seniorApprovals < o.seniorApprovals,
        o.requireAssistanceDeclaration and not n.requireAssistanceDeclaration,
    ))


def _trust_grants(text: str) -> set[tuple[str, str, str, str]]:
    # `senior` is a grant of its own: making someone senior lets one signature do more.
    store = load_trust_store(text)
    return {(e.name, role, ns, k.key.keyid) for k in store.trusted_keys() for e in [k.approver]
            for ns in e.namespaces
            for role in ((e.role, "senior") if e.senior else (e.role,))}


def config_guard(req: AdmissionRequest, snap: Snapshot) -> Verdict:
    process = snap.process
    name = req.name
    if process.is_ledger(name):
        if req.username == process.operator_service_account:
            return Verdict.allow(ReasonCode.CONFIG_CHANGE, "the operator writes the ledger")
        verdict = Verdict.deny(ReasonCode.CONFIG_GUARD,
                               "only the changegate operator may write the ledger")
        verdict.config_change = ("ledger", True)
        return verdict
    if name == process.config_configmap:
        if req.groups.intersection(admin_groups(snap)):
            verdict = Verdict.allow(ReasonCode.CONFIG_CHANGE,
                                    f"process configuration changed by policy "
                                    f"admin {req.username}")
        else:
            verdict = Verdict.deny(ReasonCode.CONFIG_GUARD,
                                   "only policyAdminGroups may change the process configuration")
        verdict.config_change = ("process", True)  # it names who may loosen: always a page
        return verdict
    if name not in (process.trust_configmap, process.policy_configmap):
        return Verdict.allow(ReasonCode.NOT_GATED, "not a changegate configuration")
    config = "trust" if name == process.trust_configmap else "policy"
    key = TRUST_KEY if config == "trust" else POLICY_KEY
    new_text = ((req.object or {}).get("data") or {}).get(key)
    old_text = ((req.old_object or {}).get("data") or {}).get(key)
    loosened = True
    problem = ""
    if req.operation != "DELETE":
        try:
            if config == "trust":
                if new_text is None:
                    raise ChangeGateError(f"trust store: the ConfigMap has no key {key}")
                grants = _trust_grants(new_text)
                loosened = old_text is None or bool(grants - _safe(_trust_grants, old_text))
            else:
                new_policy = load_policy(new_text)
                old_policy = _safe_policy(old_text)
                loosened = old_policy is None or _policy_loosened(old_policy, new_policy)
        except ChangeGateError as exc:
            problem = str(exc)
    warnings: tuple[str, ...] = ()
    if config == "trust" and not problem and isinstance(new_text, str):
        warnings = tuple(f"changegate: {w}" for w in load_trust_store(new_text).warnings)
    if problem:
        # A rule refusing bad input, not the webhook failing: config_invalid would count as
        # the webhook's own fault (and feed "webhook denying on errors").
        verdict = Verdict.deny(ReasonCode.CONFIG_GUARD, f"refused: {problem}")
    elif req.groups.intersection(admin_groups(snap)):
        verdict = Verdict.allow(ReasonCode.CONFIG_CHANGE, f"{config} changed by policy admin "
                                                 f"{req.username}")
    else:
        verdict = Verdict.deny(ReasonCode.CONFIG_GUARD,
                               f"only policyAdminGroups may change the {config}")
    verdict.warnings.extend(warnings)
    verdict.config_change = (config, loosened)
    return verdict


def _safe(fn: Any, text: str) -> set[Any]:
    try:
        return set(fn(text))
    except ChangeGateError:
        return set()


def _safe_policy(text: str | None) -> Policy | None:
    try:
        return load_policy(text) if text is not None else None
    except ChangeGateError:
        return None


def approval_object(req: AdmissionRequest, snap: Snapshot, now: datetime,
                    budget: Budget) -> Verdict:
    """SPEC §4: the rules a ChangeApproval must meet to be stored at all. Nothing here is
    memoized: the object is the request's, and any pod can send a forged review."""
    del now  # validity in time is judged at use, not at creation
    if req.operation not in ("CREATE", "UPDATE") or req.object is None:
        return Verdict.allow(ReasonCode.NOT_GATED, "only creates and updates are checked")
    if req.operation == "UPDATE" and req.object.get("spec") == (req.old_object or {}).get("spec"):
        # Metadata only (the operator's finalizer, labels): nothing signed changes, and a
        # policy change or a broken config must never make an approval undeletable.
        return Verdict.allow(ReasonCode.NOT_GATED, "the spec is unchanged")
    if snap.config_error:
        return Verdict.deny(ReasonCode.CONFIG_INVALID,
                            f"configuration invalid: {snap.config_error}")
    policy, trust = snap.policy, snap.trust
    assert policy is not None and trust is not None
    spec = req.object.get("spec")
    if not isinstance(spec, dict):
        return Verdict.deny(ReasonCode.STATEMENT_INVALID, "spec is missing")
    if req.operation == "UPDATE":
        old_spec = (req.old_object or {}).get("spec") or {}
        changed = sorted(k for k in set(spec) | set(old_spec)
                         if k != "signatures" and spec.get(k) != old_spec.get(k))
        if changed:
            return Verdict.deny(ReasonCode.APPROVAL_IMMUTABLE,
                                f"spec fields are immutable once created: {', '.join(changed)}")
        old_sigs, new_sigs = old_spec.get("signatures") or [], spec.get("signatures") or []
        if any(s not in new_sigs for s in old_sigs):
            return Verdict.deny(ReasonCode.APPROVAL_IMMUTABLE, "signatures may only be appended")
    st = _well_formed(req, spec, snap, policy)
    if isinstance(st, Verdict):
        return st
    old_sigs = ((req.old_object or {}).get("spec") or {}).get("signatures") or [] if (
        req.operation == "UPDATE") else []
    try:
        junk = _junk_signature(req.namespace, spec, old_sigs, trust, budget)
    except BudgetExhausted:
        return Verdict.deny(ReasonCode.DEADLINE_EXCEEDED,
                            "verifying this ChangeApproval's signatures "
                            "would pass the webhook's deadline")
    if junk is not None:
        return junk
    if req.operation == "CREATE":
        requester = st.predicate.requestedBy
        used = st.predicate.nonce in snap.ledger
        if used and req.username == snap.process.operator_service_account:
            # A review owed (SPEC §7a): the operator records the nonce first, then creates
            # the record of a change that already happened, naming who made it. Used, it
            # can admit nothing; this is the one case where anyone may name someone else.
            return Verdict.allow(ReasonCode.APPROVED, "a review owed, its nonce already used")
        if used:
            return Verdict.deny(ReasonCode.APPROVAL_USED,
                                "this statement's nonce was already used; "
                                "request a new approval")
        if requester != req.username:
            if req.username not in policy.trustedCreators:
                return Verdict.deny(ReasonCode.REQUESTER_MISMATCH,
                                    f"requestedBy is {requester!r} but {req.username!r} creates "
                                    "it; request your own changes")
            verified = verify_approval(req.namespace, spec, trust, allow_service_accounts=True)
            if requester not in verified.signers:
                return Verdict.deny(ReasonCode.REQUESTER_MISMATCH,
                                    f"trusted creator {req.username} may create an approval for "
                                    f"{requester} only with {requester}'s own signature")
    return Verdict.allow(ReasonCode.APPROVED, "the ChangeApproval is well-formed")


def _well_formed(req: AdmissionRequest, spec: Mapping[str, Any], snap: Snapshot,
                 policy: Policy) -> Statement | Verdict:
    """The parsed statement, or the denial that says what is wrong with the object."""
    try:
        raw = decode_statement(spec)
        st = parse_statement(raw)
    except StatementError as exc:
        return Verdict.deny(ReasonCode.STATEMENT_INVALID, str(exc))
    signatures = spec.get("signatures") or []
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        return Verdict.deny(ReasonCode.STATEMENT_INVALID, f"at most {MAX_SIGNATURES} signatures")
    for index, sig in enumerate(signatures):
        try:
            if not isinstance(sig, dict) or not isinstance(sig.get("keyid", ""), str):
                raise ValueError("not {keyid, sig}")
            b64decode(sig.get("sig", ""))
        except ValueError as exc:
            return Verdict.deny(ReasonCode.STATEMENT_INVALID, f"signatures[{index}]: {exc}")
    wrong = spec_mismatches(spec, st, req.namespace)
    if wrong:
        return Verdict.deny(ReasonCode.SPEC_STATEMENT_MISMATCH,
                            "fields differ from the statement: " + ", ".join(wrong))
    undeclared = declaration_problem(policy, st)
    if undeclared is not None:
        return Verdict.deny(ReasonCode(undeclared.code), undeclared.detail)
    p = st.predicate
    if not re.fullmatch(policy.changeRecordPattern, p.changeRecord.id):
        return Verdict.deny(ReasonCode.CHANGE_RECORD_INVALID,
                            f"change record {p.changeRecord.id!r} does "
                            f"not match {policy.changeRecordPattern}")
    if p.operation != "DELETE":
        manifest = spec.get("manifest")
        if not isinstance(manifest, dict):
            return Verdict.deny(ReasonCode.MANIFEST_MISMATCH,
                                "manifest is required for CREATE and UPDATE")
        if len(orjson.dumps(manifest)) > MAX_MANIFEST_BYTES:
            return Verdict.deny(ReasonCode.MANIFEST_MISMATCH, "manifest is over 1 MiB")
        auto = p.target.kind == "Deployment" and snap.is_autoscaled(req.namespace, p.target.name)
        got = manifest_digest(spec, policy.view_rules, auto)
        if got != p.toDigest:
            return Verdict.deny(ReasonCode.MANIFEST_MISMATCH,
                                f"manifest has digest {got}, the statement signs {p.toDigest}: "
                                "reviewers must read what they sign")
    if p.rollout.strategy == "canary":
        ns = snap.namespace(req.namespace)
        if ns is None:
            return Verdict.deny(ReasonCode.NAMESPACE_UNKNOWN,
                                f"namespace {req.namespace} is not known "
                                "to the webhook yet (retry shortly)")
        mode = namespace_settings(policy, dict(ns.annotations)).mode
        if mode != "canary":
            return Verdict.deny(ReasonCode.CANARY_REQUIRED, "rollout canary is accepted only in a "
                                                   "namespace whose enforcement is canary")
        replicas = p.rollout.canary.replicas if p.rollout.canary else 1
        if replicas > policy.maxCanaryReplicas:
            return Verdict.deny(ReasonCode.CANARY_REQUIRED, f"canary replicas {replicas} exceed "
                                                   f"maxCanaryReplicas {policy.maxCanaryReplicas}")
    return st


def _junk_signature(namespace: str, spec: Mapping[str, Any], old: list[Any],
                    trust: TrustStore, budget: Budget) -> Verdict | None:
    """SPEC §4 rule 1 at the door: every signature this write adds must verify with a key
    trusted for the namespace (approver or requester), so nobody can fill an approval with
    junk or stop others signing. Those already stored were checked when they came (a key
    since removed must not freeze the approval against new signatures)."""
    message = pae(PAYLOAD_TYPE, decode_statement(spec))
    tried: set[str] = set()
    for index, entry in enumerate(spec.get("signatures") or []):
        if entry in old:
            continue
        keyid, sig = str(entry.get("keyid", "")), b64decode(str(entry.get("sig", "")))
        named = trust.by_keyid(keyid)
        if named is not None and not named.approver.may_approve_in(namespace):
            return Verdict.deny(ReasonCode.APPROVER_WRONG_NAMESPACE,
                                f"signatures[{index}] is by {named.approver.name}, who may not "
                                f"sign in namespace {namespace}")
        if trust.find_signer(sig, message, keyid, namespace, tried=tried,
                             budget=budget) is None:
            if named is not None:
                return Verdict.deny(ReasonCode.SIGNATURE_INVALID,
                                    f"signatures[{index}] claims {named.approver.name}'s key "
                                    "but does not verify over this statement")
            return Verdict.deny(ReasonCode.KEY_UNTRUSTED,
                                f"signatures[{index}] is by no key trusted "
                                f"in namespace {namespace}")
    return None
