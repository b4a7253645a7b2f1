"""What a ChangeApproval's status says, derived from the API's state and the clock. Pure.

Status is a display, never an input: the phase is re-derived from the signed statement,
the trust store, the policy, the namespace, the ledger and ``now`` on every event and
timer tick. Only two phases cannot be re-derived from the statement alone, and both come
from records the webhook also reads: ``Applied`` (the ledger holds this approval's nonce)
and ``Expired`` (the clock). So a restarted operator writes exactly what it wrote before.

"Approved" means what the webhook's ``fit`` requires of the approval itself: every
signature verifies, enough distinct eligible approvers, in time, the right cluster and
change-record pattern, a manifest with the signed digest. What only the admission request
can tell (the applier, the live digests, sibling approvals of the record) is not judged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from changegate.core.approval import (
    Problem,
    VerifiedApproval,
    add_time_problems,
    decode_statement,
    manifest_digest,
    spec_mismatches,
)
from changegate.core.errors import StatementError
from changegate.core.policy import Policy
from changegate.core.statement import Statement, format_time, parse_statement
from changegate.operator.ledger import CANONICAL_NONCE, LedgerEntry, shard

# The phases this module derives; the others (canary, break-glass review) are set by the
# flows that own them and left alone here.
MANAGED = frozenset({"", "Pending", "Approved", "Applied", "Expired", "Rejected"})
TERMINAL = frozenset({"Applied", "Expired"})
# What no further signature can cure: the approval can never admit its change as it is.
FATAL = frozenset({"statement_invalid", "spec_statement_mismatch", "manifest_mismatch",
                   "lifetime_exceeded", "cluster_mismatch", "change_record_invalid",
                   "approval_used", "nonce_invalid"})
SIGNATURE_CODES = frozenset({"signature_invalid", "key_untrusted", "approver_wrong_namespace"})
# Counted, not blocking (the webhook's fit() ignores them too): a duplicate key of one
# person, the requester's own signature, or a signature that does not verify for this
# namespace (SPEC §4 rule 1: it admits nothing and spoils nothing) just does not count.
# The Verified condition still shows it.
NOT_BLOCKING = frozenset({"approver_duplicate", "self_approval", *SIGNATURE_CODES})
STATEMENT_CODES = frozenset({"statement_invalid", "spec_statement_mismatch",
                             "manifest_mismatch", "nonce_invalid"})
MAX_NAMES_SHOWN = 8
MAX_MESSAGE = 1024  # kopf cuts Event messages here; conditions allow more but stay readable


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Facts:
    """Everything the status depends on, gathered by the handler from the API's state."""

    namespace: str
    name: str
    uid: str
    spec: Mapping[str, Any]
    verified: VerifiedApproval | None  # None: the trust store or the policy is unusable
    policy: Policy | None
    config_error: str
    required: int
    eligible: frozenset[str]  # who the trust store lets approve in this namespace
    autoscaled: bool
    ledger: LedgerEntry | None  # what the ledger holds for this statement's nonce
    now: datetime
    previous_phase: str = ""
    # SPEC §6a problems (a missing declaration, a missing senior signature), judged by
    # core.senior where the trust store is at hand.
    policy_rules: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Assessment:
    phase: str
    approvers: tuple[str, ...]
    required: int
    conditions: tuple[Condition, ...]
    problems: tuple[Problem, ...]
    statement: Statement | None  # the *verified* statement: only its nonce may be recorded
    nonce: str
    missing: tuple[str, ...]  # eligible approvers who have not signed
    record: str  # the change record id, as the spec shows it
    summary: str  # "CHG-1234: UPDATE Deployment checkout"

    def condition(self, kind: str) -> Condition:
        return next(c for c in self.conditions if c.type == kind)


def read_statement(spec: Mapping[str, Any], namespace: str
                   ) -> tuple[Statement | None, Problem | None]:
    """The statement as written, before any signature: for its expiry, its nonce and to
    tell an approval no signature can save. Never trusted for anything else."""
    try:
        st = parse_statement(decode_statement(spec))
    except StatementError as exc:
        return None, Problem("statement_invalid", str(exc))
    wrong = spec_mismatches(spec, st, namespace)
    if wrong:
        return st, Problem("spec_statement_mismatch", "the ChangeApproval's fields differ from "
                                                      "its statement: " + ", ".join(wrong))
    return st, None


def reason_of(code: str) -> str:
    """``approvals_insufficient`` -> ``ApprovalsInsufficient`` (a condition reason)."""
    return "".join(part.capitalize() for part in code.split("_")) or "Unknown"


def assess(f: Facts) -> Assessment:
    written, read_problem = read_statement(f.spec, f.namespace)
    verified = f.verified.statement if f.verified is not None else None
    st = verified or written
    problems: list[Problem] = [read_problem] if read_problem else []
    if f.verified is not None:
        problems += [p for p in f.verified.problems
                     if not (read_problem and p.code in STATEMENT_CODES)]
    nonce = st.predicate.nonce if st is not None else ""
    if st is not None and not CANONICAL_NONCE.match(nonce):
        problems.append(Problem("nonce_invalid", f"nonce {nonce!r} is not a lowercase UUID: "
                                                 "the ledger could not record its use"))
    if st is not None and f.policy is not None:
        _policy_problems(st, f, problems)
    problems.extend(f.policy_rules)
    approvers = tuple(sorted(f.verified.approvers)) if f.verified and verified else ()
    requester = st.predicate.requestedBy if st is not None else ""
    missing = tuple(sorted(f.eligible - set(approvers) - {requester}))
    if f.verified is not None and read_problem is None and len(approvers) < f.required:
        problems.append(Problem("approvals_insufficient",
                                _count(approvers, f.required, missing, f.verified.problems)))
    mine = f.ledger is not None and f.ledger.approval == f"{f.namespace}/{f.name}" and (
        f.ledger.uid in ("", f.uid))
    if f.ledger is not None and not mine:
        problems.append(Problem("approval_used", f"its nonce is already in the ledger, used by "
                                                 f"{f.ledger.approval}: request a new approval"))
    expired = st is not None and f.now >= st.expires_at
    blocking = [p for p in problems if p.code not in NOT_BLOCKING]
    if mine:
        phase = "Applied"
    elif f.ledger is not None:
        phase = "Rejected"
    elif expired:
        phase = "Expired"
    elif f.verified is None:  # cannot judge: keep what was shown, the conditions say why
        phase = f.previous_phase if f.previous_phase in ("Pending", "Approved", "Rejected") \
            else "Pending"
    elif any(p.code in FATAL for p in blocking):
        phase = "Rejected"
    else:
        phase = "Pending" if blocking else "Approved"
    a = Assessment(phase=phase, approvers=approvers, required=f.required, conditions=(),
                   problems=tuple(problems), statement=verified, nonce=nonce, missing=missing,
                   record=_field(f.spec, "changeRecord", "id"), summary=_summary(f.spec))
    return _with_conditions(a, f, st, blocking)


def _policy_problems(st: Statement, f: Facts, problems: list[Problem]) -> None:
    policy, p = f.policy, st.predicate
    assert policy is not None
    add_time_problems(st, f.now, policy.maxApprovalLifetime,
                      lambda q: problems.append(q) if q.code != "expired" else None)
    if p.cluster != policy.clusterName:
        problems.append(Problem("cluster_mismatch", f"approval is for cluster {p.cluster!r}, "
                                                    f"this is {policy.clusterName!r}"))
    if not re.fullmatch(policy.changeRecordPattern, p.changeRecord.id):
        problems.append(Problem("change_record_invalid", f"change record {p.changeRecord.id!r} "
                                f"does not match {policy.changeRecordPattern}"))
    if p.operation != "DELETE":
        got = manifest_digest(f.spec, policy.view_rules, f.autoscaled)
        if got != p.toDigest:
            problems.append(Problem("manifest_mismatch", f"the manifest has digest {got}, the "
                                    f"statement signs {p.toDigest}: reviewers must read what "
                                    "they sign"))


def _count(approvers: tuple[str, ...], required: int, missing: tuple[str, ...],
           verified_problems: tuple[Problem, ...]) -> str:
    text = f"{len(approvers)}/{required} approvals"
    if approvers:
        text += f" ({', '.join(approvers)})"
    uncounted = [q.detail for q in verified_problems if q.code in NOT_BLOCKING]
    if uncounted:
        text += "; not counted: " + "; ".join(uncounted)
    need = required - len(approvers)
    if missing:
        text += f"; needs {need} more from: {_names(missing)}"
    else:
        text += f"; needs {need} more, and no other approver in the trust store may approve here"
    return text


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" (+{len(names) - MAX_NAMES_SHOWN} more)" if len(names) > MAX_NAMES_SHOWN
                    else "")


def _field(spec: Mapping[str, Any], key: str, sub: str | None = None) -> str:
    value = spec.get(key)
    if sub is not None:
        value = value.get(sub) if isinstance(value, dict) else None
    return str(value) if value else "?"


def _summary(spec: Mapping[str, Any]) -> str:
    return (f"{_field(spec, 'changeRecord', 'id')}: {_field(spec, 'operation')} "
            f"{_field(spec, 'target', 'kind')} {_field(spec, 'target', 'name')}")


def _with_conditions(a: Assessment, f: Facts, st: Statement | None,
                     blocking: list[Problem]) -> Assessment:
    spec = f.spec
    target = f"{_field(spec, 'target', 'kind')} {f.namespace}/{_field(spec, 'target', 'name')}"
    verified_c = _verified_condition(f, a.problems)
    if f.verified is None:
        approved = Condition("Approved", "Unknown", "ConfigurationInvalid", f.config_error)
    elif a.phase in ("Approved", "Applied"):
        approved = Condition("Approved", "True", "Approved",
                             f"approved by {', '.join(a.approvers) or 'nobody'} "
                             f"({len(a.approvers)}/{a.required})")
    else:
        first = next((p for p in blocking if p.code != "expired"), None)
        approved = Condition("Approved", "False",
                             reason_of(first.code) if first else "Expired",
                             "; ".join(p.detail for p in blocking) or "expired")
    if st is None:
        expired = Condition("Expired", "Unknown", "StatementInvalid", "no readable expiresAt")
    elif f.now >= st.expires_at:
        expired = Condition("Expired", "True", "Expired", f"expired at {st.predicate.expiresAt}")
    else:
        expired = Condition("Expired", "False", "NotExpired",
                            f"expires at {st.predicate.expiresAt}")
    op = _field(spec, "operation")
    goal = "be deleted" if op == "DELETE" else f"reach {_field(spec, 'toDigest')}"
    if a.phase == "Applied":
        where = shard(a.nonce) if CANONICAL_NONCE.match(a.nonce) else "the ledger"
        done = "is gone" if op == "DELETE" else f"reached {_field(spec, 'toDigest')}"
        applied = Condition("Applied", "True", "TargetReached",
                            f"{target} {done}; the approval is used (nonce {a.nonce} in {where})")
    elif a.phase == "Approved":
        applied = Condition("Applied", "False", "WaitingForTarget",
                            f"waiting for {target} to {goal} "
                            f"(changegate apply {f.name} -n {f.namespace})")
    elif a.phase == "Expired":
        applied = Condition("Applied", "False", "Expired", f"expired before {target} could {goal}")
    else:
        applied = Condition("Applied", "False", "NotApproved", "not approved yet")
    conditions = tuple(Condition(c.type, c.status, c.reason, c.message[:MAX_MESSAGE])
                       for c in (verified_c, approved, expired, applied))
    return replace(a, conditions=conditions)


def _verified_condition(f: Facts, problems: tuple[Problem, ...]) -> Condition:
    if f.verified is None:
        return Condition("Verified", "Unknown", "ConfigurationInvalid", f.config_error)
    bad = [p for p in problems if p.code in SIGNATURE_CODES | STATEMENT_CODES]
    if bad:
        return Condition("Verified", "False", reason_of(bad[0].code),
                         "; ".join(p.detail for p in bad))
    results = f.verified.signature_results
    if not results:
        return Condition("Verified", "Unknown", "NotSigned", "no signatures yet")
    return Condition("Verified", "True", "SignaturesValid",
                     f"{len(results)} of {len(results)} signatures verify "
                     f"({', '.join(sorted(f.verified.signers))})")


# --- the status object and the Events a change of it deserves -----------------------

def status_body(old: Mapping[str, Any], a: Assessment, now: datetime,
                generation: int | None) -> dict[str, Any]:
    """The whole ``status``; a condition keeps its lastTransitionTime while its status
    stays the same, as metav1.Condition requires."""
    before = {c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, dict)}
    conditions = []
    for c in a.conditions:
        prev = before.get(c.type) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == c.status else None
        item: dict[str, Any] = {"type": c.type, "status": c.status, "reason": c.reason,
                                "message": c.message,
                                "lastTransitionTime": since or format_time(now)}
        if generation is not None:
            item["observedGeneration"] = generation
        conditions.append(item)
    body: dict[str, Any] = {"phase": a.phase, "approvers": list(a.approvers),
                            "approvals": len(a.approvers), "required": a.required,
                            "conditions": conditions}
    if generation is not None:
        body["observedGeneration"] = generation
    return body


def unchanged(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(old.get(k) == v for k, v in new.items())


def events(old: Mapping[str, Any], new: Mapping[str, Any], a: Assessment,
           name: str, namespace: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) for what changed: so ``kubectl describe`` tells the story."""
    out: list[tuple[str, str, str]] = []
    phase, was = new["phase"], old.get("phase") or ""
    who = ", ".join(a.approvers) or "nobody"
    count = f"{len(a.approvers)}/{a.required}"
    if phase != was:
        message = {
            "Pending": f"{a.summary} waits for approvals: "
                       f"{a.condition('Approved').message}",
            "Approved": f"{a.summary} approved by {who} ({count}); apply it with: "
                        f"changegate apply {name} -n {namespace}",
            "Applied": f"{a.summary} applied: {a.condition('Applied').message}",
            "Expired": f"{a.summary} expired with {count} approvals, unused",
            "Rejected": f"{a.summary} can never be used: {a.condition('Approved').message}",
        }.get(phase, f"{a.summary} is {phase}")
        kind = "Warning" if phase in ("Expired", "Rejected") else "Normal"
        out.append((kind, phase, message[:MAX_MESSAGE]))
    elif phase == "Pending" and set(a.approvers) > set(old.get("approvers") or []):
        added = ", ".join(sorted(set(a.approvers) - set(old.get("approvers") or [])))
        out.append(("Normal", "Signed", f"{a.summary} signed by {added} ({count}); still "
                                        f"{a.condition('Approved').message}"[:MAX_MESSAGE]))
    verified = a.condition("Verified")
    before = {c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, dict)}
    prev = before.get("Verified") or {}
    if verified.status == "False" and (prev.get("status"), prev.get("message")) != (
            verified.status, verified.message):
        out.append(("Warning", verified.reason, f"{a.summary}: {verified.message}"[:MAX_MESSAGE]))
    return out
