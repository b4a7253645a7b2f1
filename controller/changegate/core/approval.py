"""One ChangeApproval judged: its signatures verified, its statement read, its fit to a change.

Two stages, because they change at different rates:
- ``verify_approval`` depends only on the object and the trust store, so its result is
  memoized by the content it reads (the caller's VerificationMemo: namespace, the spec
  without its manifest, trust-store version): a request verifies nothing verified before,
  relabelling an approval costs nothing, and a key removed from the trust store stops
  counting at once (new version, new verification).
- ``fit`` checks the verified statement against one admission request and the clock.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from changegate.core.budget import Budget
from changegate.core.digest import ViewRules, digest
from changegate.core.dsse import PAYLOAD_TYPE, b64decode, pae
from changegate.core.errors import ChangeGateError, NotCanonicalError, StatementError
from changegate.core.reasons import ReasonCode
from changegate.core.statement import Statement, parse_statement
from changegate.core.trust import TrustStore

MAX_SIGNATURES = 16
MAX_STATEMENT_B64 = 21848  # 16 KiB of bytes, base64-encoded with padding
CLOCK_SKEW = timedelta(seconds=60)
# Problems that only leave a signature uncounted; they block nothing by themselves.
UNCOUNTED = (ReasonCode.APPROVER_DUPLICATE, ReasonCode.SELF_APPROVAL,
             ReasonCode.AUTOMATION_APPROVER)
# CR spec fields that must equal the statement's (the statement is what was signed).
SPEC_FIELDS = ("cluster", "operation", "fromDigest", "toDigest", "changeRecord",
               "requestedBy", "issuedAt", "expiresAt", "rollout", "assistance")


# A signature that does not count admits nothing and spoils nothing (SPEC §4 rule 1): these
# problems explain a shortfall of approvals, never refuse an approval that has enough.
NOT_COUNTED = frozenset({"signature_invalid", "key_untrusted", "approver_wrong_namespace"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an approval does not admit a change: a stable code and a sentence."""

    code: str
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifiedApproval:
    """What the signatures prove. ``statement`` is None when nothing verified or it is bad."""

    statement: Statement | None
    approvers: frozenset[str]  # distinct verified approver names (role approver, namespace ok)
    signers: frozenset[str]  # every verified signer name, any role (trusted-creator check)
    problems: tuple[Problem, ...]
    # valid | invalid | untrusted, one per signature (changegate_signature_verifications_total)
    signature_results: tuple[str, ...]
    # The statement parsed WITHOUT a verified signature, when nobody has signed yet. Used
    # only to explain a denial ("0/2 approvals under CHG-1"), never to admit: an approval
    # with no verified approver can never fit (requiredApprovals >= 1).
    unverified: Statement | None = None


def decode_statement(spec: Mapping[str, Any]) -> bytes:
    raw = spec.get("statement")
    if not isinstance(raw, str) or not raw:
        raise StatementError("spec.statement is missing")
    if len(raw) > MAX_STATEMENT_B64:
        raise StatementError("spec.statement is over 16 KiB")
    try:
        return b64decode(raw)
    except ValueError as exc:
        raise StatementError(f"spec.statement: {exc}") from exc


def spec_mismatches(spec: Mapping[str, Any], statement: Statement, namespace: str) -> list[str]:
    """Fields where the CR says something other than what was signed."""
    pred = statement.predicate.model_dump(exclude_unset=True, exclude_none=True)
    wrong = [f for f in SPEC_FIELDS if _normal(spec.get(f)) != _normal(pred.get(f))]
    target = dict(pred["target"])
    if target.pop("namespace") != namespace:
        wrong.append("target.namespace (the statement names another namespace)")
    if _normal(spec.get("target")) != _normal(target):
        wrong.append("target")
    return wrong


def _normal(value: Any) -> Any:
    """Compare as the API server stores it: nulls dropped, so {url: null} == {}."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v is not None}
    return value


def verify_approval(obj_namespace: str, spec: Mapping[str, Any], trust: TrustStore, *,
                    allow_service_accounts: bool, automation: frozenset[str] = frozenset(),
                    budget: Budget | None = None) -> VerifiedApproval:
    """Verify first, then parse the verified bytes. Raises only BudgetExhausted.
    ``automation``: the policy's automation users, whose signatures never count as
    approvals (SPEC §6a).

    Work is bounded (SPEC §4 rule 1, §5): per signature one verification with the key its
    ``keyid`` names when that key is trusted in this namespace, then at most one try per
    other key trusted here, each key tried once per approval. Without a ``budget`` that
    bound is the budget (the operator and the CLI look at one approval at a time).
    """
    budget = budget or Budget(MAX_SIGNATURES + len(trust))
    problems: list[Problem] = []
    results: list[str] = []
    try:
        payload = decode_statement(spec)
    except StatementError as exc:
        return VerifiedApproval(statement=None, approvers=frozenset(), signers=frozenset(),
                                problems=(Problem(ReasonCode.STATEMENT_INVALID, str(exc)),),
                                signature_results=())
    message = pae(PAYLOAD_TYPE, payload)
    signatures = spec.get("signatures") or []
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        return VerifiedApproval(statement=None, approvers=frozenset(), signers=frozenset(),
                                problems=(Problem(ReasonCode.STATEMENT_INVALID,
                                                  "spec.signatures must be "
                                                  f"a list of at most {MAX_SIGNATURES}"),),
                                signature_results=())
    signers: dict[str, str] = {}  # name -> role
    tried: set[str] = set()  # keys already tried without a keyid naming them
    for index, entry in enumerate(signatures):
        keyid = str(entry.get("keyid", "")) if isinstance(entry, dict) else ""
        try:
            sig = b64decode(entry.get("sig", "") if isinstance(entry, dict) else "")
        except ValueError as exc:
            results.append("invalid")
            problems.append(Problem(ReasonCode.SIGNATURE_INVALID, f"signatures[{index}]: {exc}"))
            continue
        named = trust.by_keyid(keyid)
        if named is not None and not named.approver.may_approve_in(obj_namespace):
            # No verification spent: whatever it proves, it cannot count here.
            results.append("untrusted")
            problems.append(Problem(ReasonCode.APPROVER_WRONG_NAMESPACE,
                                    f"signatures[{index}] names {named.approver.name}'s key; "
                                    f"{named.approver.name} may not approve in namespace "
                                    f"{obj_namespace}"))
            continue
        signer = trust.find_signer(sig, message, keyid, obj_namespace, tried=tried,
                                   budget=budget)
        if signer is None:
            if named is not None:
                results.append("invalid")
                problems.append(Problem(ReasonCode.SIGNATURE_INVALID,
                                        f"signatures[{index}] claims {named.approver.name}'s key "
                                        "but does not verify: forged or made over other bytes"))
            else:
                results.append("untrusted")
                problems.append(Problem(ReasonCode.KEY_UNTRUSTED,
                                        f"signatures[{index}] is by no key in the trust store "
                                        f"for namespace {obj_namespace}"))
            continue
        results.append("valid")
        name = signer.approver.name
        if name in signers:
            problems.append(Problem(ReasonCode.APPROVER_DUPLICATE,
                                    f"{name} signed twice (two keys of one person count once)"))
        signers.setdefault(name, signer.approver.role)
        if signer.approver.role != "approver":
            continue  # a requester's key signs as requester only
        if name.startswith("system:") and not allow_service_accounts:
            problems.append(Problem(ReasonCode.KEY_UNTRUSTED,
                                    f"{name} is a service account; the policy refuses those "
                                    "as approvers"))
            signers[name] = "service-account"
        elif name in automation:
            # Ignored, not spoiling: the humans' signatures on the same approval still count.
            problems.append(Problem(ReasonCode.AUTOMATION_APPROVER,
                                    f"{name} is an automation identity (policy automation); "
                                    "it never counts as an approver"))
            signers[name] = "automation"
    if not signers:
        return VerifiedApproval(statement=None, approvers=frozenset(), signers=frozenset(),
                                problems=tuple(problems), signature_results=tuple(results),
                                unverified=_unverified(payload, spec, obj_namespace))
    try:
        statement = parse_statement(payload)
    except StatementError as exc:
        problems.append(Problem(ReasonCode.STATEMENT_INVALID, str(exc)))
        return VerifiedApproval(statement=None, approvers=frozenset(),
                                signers=frozenset(signers), problems=tuple(problems),
                                signature_results=tuple(results))
    wrong = spec_mismatches(spec, statement, obj_namespace)
    if wrong:
        problems.append(Problem(ReasonCode.SPEC_STATEMENT_MISMATCH,
                                "the ChangeApproval's fields differ from the signed statement: "
                                + ", ".join(wrong)))
        return VerifiedApproval(statement=None, approvers=frozenset(),
                                signers=frozenset(signers), problems=tuple(problems),
                                signature_results=tuple(results))
    approvers = {n for n, role in signers.items() if role == "approver"}
    requester = statement.predicate.requestedBy
    if requester in approvers:
        approvers.discard(requester)
        problems.append(Problem(ReasonCode.SELF_APPROVAL,
                                f"{requester} requested this change and cannot approve it"))
    return VerifiedApproval(statement=statement, approvers=frozenset(approvers),
                            signers=frozenset(signers), problems=tuple(problems),
                            signature_results=tuple(results))


def _unverified(payload: bytes, spec: Mapping[str, Any], namespace: str) -> Statement | None:
    try:
        statement = parse_statement(payload)
    except StatementError:
        return None
    return None if spec_mismatches(spec, statement, namespace) else statement


class VerificationMemo:
    """Bounded memo of verify_approval results, kept by the caller across decisions.

    Keys name the full content a result depends on (SPEC §5): the caller builds them from
    watched ChangeApprovals, never from a request body.
    """

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._data: OrderedDict[tuple[str, ...], VerifiedApproval] = OrderedDict()
        self.hits = 0

    def get(self, key: tuple[str, ...]) -> VerifiedApproval | None:
        found = self._data.get(key)
        if found is not None:
            self.hits += 1
            self._data.move_to_end(key)
        return found

    def put(self, key: tuple[str, ...], value: VerifiedApproval) -> None:
        self._data[key] = value
        if len(self._data) > self._size:
            self._data.popitem(last=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """The change an admission request makes, as the approval must name it."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    operation: str
    from_digest: str
    to_digest: str
    applier: str


@dataclass(kw_only=True, slots=True)
class Fit:
    """How well one verified approval fits one change; built up by fit() and decide()."""

    approval: str
    problems: list[Problem] = field(default_factory=list)
    approvers: frozenset[str] = frozenset()
    record: str = ""
    nonce: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def names_another_change(self) -> bool:
        return any(q.code in OTHER_CHANGE for q in self.problems)

    @property
    def alive(self) -> bool:
        """Whether it could still admit some change: not used, not expired."""
        return not any(q.code in DEAD for q in self.problems)


OTHER_CHANGE = frozenset({"digest_mismatch", "target_mismatch", "operation_mismatch"})
# An approval with one of these can admit nothing, ever: a denial is not explained by it.
DEAD = frozenset({"approval_used", "expired"})


def fit(verified: VerifiedApproval, change: Change, *, cluster: str, now: datetime,
        max_lifetime: int, record_pattern: str, required: int, used: frozenset[str],
        phase: str, name: str) -> Fit:
    """Every rule of SPEC §4 that depends on the request, the clock or the ledger."""
    result = Fit(approval=name)
    result.problems.extend(p for p in verified.problems
                           if p.code not in UNCOUNTED and p.code not in NOT_COUNTED)
    st = verified.statement or verified.unverified
    if st is None:
        result.problems.extend(p for p in verified.problems if p.code in NOT_COUNTED)
        if not result.problems:
            result.problems.append(Problem(ReasonCode.NO_APPROVAL, "no signature verifies"))
        return result
    p = st.predicate
    result.record, result.nonce = p.changeRecord.id, p.nonce
    add = result.problems.append
    if p.operation != change.operation:
        add(Problem(ReasonCode.OPERATION_MISMATCH, f"approval is for {p.operation}, request is "
                                          f"{change.operation}"))
    t = p.target
    if (t.apiVersion, t.kind, t.namespace, t.name) != (
            change.api_version, change.kind, change.namespace, change.name):
        add(Problem(ReasonCode.TARGET_MISMATCH, f"approval names {t.kind} {t.namespace}/{t.name}"))
    elif t.uid != change.uid:
        add(Problem(ReasonCode.TARGET_MISMATCH,
                    f"approval names object uid {t.uid}, the live object is "
                    f"{change.uid}"))
    if p.fromDigest != change.from_digest:
        add(Problem(ReasonCode.DIGEST_MISMATCH,
                    f"approval starts from {p.fromDigest}, the live object "
                    f"is {change.from_digest}"))
    if p.toDigest != change.to_digest:
        add(Problem(ReasonCode.DIGEST_MISMATCH, f"approval produces {p.toDigest}, this request "
                                       f"produces {change.to_digest}"))
    # After "is this the change?": for another change, that is the useful answer. Reasons
    # follow facts (SPEC §4 rule 5): past expiresAt is `expired` whatever the phase says.
    expired = now >= st.expires_at
    if expired:
        add(Problem(ReasonCode.EXPIRED, f"approval {name} expired at {p.expiresAt}"))
    elif p.nonce in used:
        add(Problem(ReasonCode.APPROVAL_USED,
                    f"approval {name} was already used (its nonce is in the "
                    "ledger); request a new one"))
    elif phase == "Applied":
        add(Problem(ReasonCode.APPROVAL_USED, f"approval {name} is Applied"))
    elif phase == "Expired":  # the operator's clock is ahead of ours: status only tightens
        add(Problem(ReasonCode.EXPIRED, f"approval {name} is marked Expired"))
    if p.cluster != cluster:
        add(Problem(ReasonCode.CLUSTER_MISMATCH, f"approval is for cluster {p.cluster!r}, this is "
                                        f"{cluster!r}"))
    add_time_problems(st, now, max_lifetime, add, expiry=False)
    if not record_matches(record_pattern, p.changeRecord.id):
        add(Problem(ReasonCode.CHANGE_RECORD_INVALID,
                    f"change record {p.changeRecord.id!r} does not "
                    f"match {record_pattern}"))
    # The applier, like the requester, never counts; the approval stays valid if enough
    # others signed (SPEC §1: two approvers, neither of whom requested or applies it).
    approvers = verified.approvers - {change.applier}
    result.approvers = approvers
    if len(approvers) < required:
        excluded = [q for q in verified.problems if q.code in UNCOUNTED]
        if change.applier in verified.approvers:
            excluded.insert(0, Problem(ReasonCode.APPLIER_APPROVAL,
                                       f"{change.applier} applies this "
                                       "change and cannot also approve it"))
        detail = f"{len(approvers)}/{required} approvals"
        if excluded:
            detail += " (" + "; ".join(q.detail for q in excluded) + ")"
        add(Problem(excluded[0].code if excluded else ReasonCode.APPROVALS_INSUFFICIENT, detail))
        # Only now do signatures that do not count matter: they explain the shortfall.
        result.problems.extend(q for q in verified.problems if q.code in NOT_COUNTED)
    return result


def record_matches(pattern: str, record: str) -> bool:
    return re.fullmatch(pattern, record) is not None


def add_time_problems(st: Statement, now: datetime, max_lifetime: int, add: Any, *,
                      expiry: bool = True) -> None:
    issued, expires = st.issued_at, st.expires_at
    if issued > now + CLOCK_SKEW:
        add(Problem(ReasonCode.NOT_YET_VALID, f"issued at {st.predicate.issuedAt}, in the future"))
    if expiry and now >= expires:
        add(Problem(ReasonCode.EXPIRED, f"expired at {st.predicate.expiresAt}"))
    if (expires - issued).total_seconds() > max_lifetime:
        add(Problem(ReasonCode.LIFETIME_EXCEEDED,
                    f"lifetime {expires - issued} is over the maximum "
                    f"{timedelta(seconds=max_lifetime)}"))


def manifest_digest(spec: Mapping[str, Any], rules: ViewRules, autoscaled: bool) -> str | None:
    manifest = spec.get("manifest")
    if not isinstance(manifest, dict):
        return None
    try:
        return digest(manifest, rules, autoscaled=autoscaled)
    except NotCanonicalError:
        return None


def best(fits: Iterable[Fit]) -> Fit | None:
    """The approval closest to admitting the change, to explain a denial. A used or
    expired approval explains only a denial of the very change it names (a replay); one
    of an earlier change stays listed for 30 days and must not explain every later
    denial, nor hide the restart path."""
    candidates = [f for f in fits if f.alive or not f.names_another_change]
    return min(candidates, key=_closeness) if candidates else None  # first of the closest


def _closeness(f: Fit) -> tuple[bool, bool, bool, int, int]:
    return (not f.ok,
            any(q.code in (ReasonCode.TARGET_MISMATCH, ReasonCode.OPERATION_MISMATCH)
                for q in f.problems),
            any(q.code == ReasonCode.DIGEST_MISMATCH for q in f.problems),
            -len(f.approvers),
            len(f.problems))


__all__ = ["Change", "ChangeGateError", "Fit", "Problem", "VerificationMemo",
           "VerifiedApproval", "best", "fit", "manifest_digest", "verify_approval"]
