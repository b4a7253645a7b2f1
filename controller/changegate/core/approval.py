"""One ChangeApproval judged: its signatures verified, its statement read, its fit to a change.

Two stages, because they change at different rates:
- ``verify_approval`` depends only on the object and the trust store, so its result is
  memoized per (ChangeApproval uid, resourceVersion, trust-store version): a request
  verifies nothing it has verified before, and a key removed from the trust store stops
  counting at once (new version, new verification).
- ``fit`` checks the verified statement against one admission request and the clock.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from changegate.core.digest import ViewRules, digest
from changegate.core.dsse import PAYLOAD_TYPE, b64decode, pae
from changegate.core.errors import ChangeGateError, NotCanonicalError, StatementError
from changegate.core.statement import Statement, parse_statement
from changegate.core.trust import TrustStore

MAX_SIGNATURES = 16
MAX_STATEMENT_B64 = 21848  # 16 KiB of bytes, base64-encoded with padding
CLOCK_SKEW = timedelta(seconds=60)
# Problems that only leave a signature uncounted; they block nothing by themselves.
UNCOUNTED = ("approver_duplicate", "self_approval", "automation_approver")
# CR spec fields that must equal the statement's (the statement is what was signed).
SPEC_FIELDS = ("cluster", "operation", "fromDigest", "toDigest", "changeRecord",
               "requestedBy", "issuedAt", "expiresAt", "rollout", "assistance")


class Problem:
    """One reason an approval does not admit a change: a stable code and a sentence. A
    plain class: see verdict.Decision for why (several are built for each denial)."""

    __slots__ = ("code", "detail")

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.code, self.detail) == (
            other.code, other.detail)

    def __hash__(self) -> int:
        return hash((self.code, self.detail))

    def __repr__(self) -> str:
        return f"Problem({self.code!r}, {self.detail!r})"


@dataclass(frozen=True)
class VerifiedApproval:
    """What the signatures prove. ``statement`` is None when nothing verified or it is bad."""

    statement: Statement | None
    approvers: frozenset[str]  # distinct verified approver names (role approver, namespace ok)
    signers: frozenset[str]  # every verified signer name, any role (trusted-creator check)
    problems: tuple[Problem, ...]
    signature_results: tuple[str, ...]  # valid | invalid | untrusted, one per signature
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
                    allow_service_accounts: bool, automation: frozenset[str] = frozenset()
                    ) -> VerifiedApproval:
    """Verify first, then parse the verified bytes. Never raises. ``automation``: the
    policy's automation users, whose signatures never count as approvals (SPEC §6a)."""
    problems: list[Problem] = []
    results: list[str] = []
    try:
        payload = decode_statement(spec)
    except StatementError as exc:
        return VerifiedApproval(None, frozenset(), frozenset(),
                                (Problem("statement_invalid", str(exc)),), ())
    message = pae(PAYLOAD_TYPE, payload)
    signatures = spec.get("signatures") or []
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        return VerifiedApproval(None, frozenset(), frozenset(), (Problem(
            "statement_invalid", f"spec.signatures must be a list of at most {MAX_SIGNATURES}"),
        ), ())
    signers: dict[str, str] = {}  # name -> role
    for index, entry in enumerate(signatures):
        keyid = str(entry.get("keyid", "")) if isinstance(entry, dict) else ""
        try:
            sig = b64decode(entry.get("sig", "") if isinstance(entry, dict) else "")
        except ValueError as bad:  # not `exc`: mypyc types a name once per function
            results.append("invalid")
            problems.append(Problem("signature_invalid", f"signatures[{index}]: {bad}"))
            continue
        signer = trust.find_signer(sig, message, keyid)
        if signer is None:
            if trust.by_keyid(keyid) is not None:
                results.append("invalid")
                who = trust.by_keyid(keyid).approver.name  # type: ignore[union-attr]
                problems.append(Problem("signature_invalid",
                                        f"signatures[{index}] claims {who}'s key but does not "
                                        "verify: forged or made over other bytes"))
            else:
                results.append("untrusted")
                problems.append(Problem("key_untrusted",
                                        f"signatures[{index}] is by no key in the trust store"))
            continue
        results.append("valid")
        name = signer.approver.name
        if name in signers:
            problems.append(Problem("approver_duplicate",
                                    f"{name} signed twice (two keys of one person count once)"))
        signers.setdefault(name, signer.approver.role)
        if signer.approver.role != "approver":
            continue  # a requester's key signs as requester only
        if not signer.approver.may_approve_in(obj_namespace):
            problems.append(Problem("approver_wrong_namespace",
                                    f"{name} may not approve in namespace {obj_namespace}"))
            signers[name] = "elsewhere"
        elif name.startswith("system:") and not allow_service_accounts:
            problems.append(Problem("key_untrusted",
                                    f"{name} is a service account; the policy refuses those "
                                    "as approvers"))
            signers[name] = "service-account"
        elif name in automation:
            # Ignored, not spoiling: the humans' signatures on the same approval still count.
            problems.append(Problem("automation_approver",
                                    f"{name} is an automation identity (policy automation); "
                                    "it never counts as an approver"))
            signers[name] = "automation"
    if not signers:
        return VerifiedApproval(None, frozenset(), frozenset(), tuple(problems), tuple(results),
                                unverified=_unverified(payload, spec, obj_namespace))
    try:
        statement = parse_statement(payload)
    except StatementError as exc:
        problems.append(Problem("statement_invalid", str(exc)))
        return VerifiedApproval(None, frozenset(), frozenset(signers), tuple(problems),
                                tuple(results))
    wrong = spec_mismatches(spec, statement, obj_namespace)
    if wrong:
        problems.append(Problem("spec_statement_mismatch",
                                "the ChangeApproval's fields differ from the signed statement: "
                                + ", ".join(wrong)))
        return VerifiedApproval(None, frozenset(), frozenset(signers), tuple(problems),
                                tuple(results))
    approvers = {n for n, role in signers.items() if role == "approver"}
    requester = statement.predicate.requestedBy
    if requester in approvers:
        approvers.discard(requester)
        problems.append(Problem("self_approval",
                                f"{requester} requested this change and cannot approve it"))
    return VerifiedApproval(statement, frozenset(approvers), frozenset(signers),
                            tuple(problems), tuple(results))


def _unverified(payload: bytes, spec: Mapping[str, Any], namespace: str) -> Statement | None:
    try:
        statement = parse_statement(payload)
    except StatementError:
        return None
    return None if spec_mismatches(spec, statement, namespace) else statement


class VerificationMemo:
    """Bounded memo of verify_approval per (uid, resourceVersion, trust version)."""

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


class Change:
    """The change an admission request makes, as the approval must name it. Like Fit, a
    plain class: see verdict.Decision for why (once per gated request)."""

    __slots__ = ("api_version", "applier", "from_digest", "kind", "name", "namespace",
                 "operation", "to_digest", "uid")

    def __init__(self, *, api_version: str, kind: str, namespace: str, name: str, uid: str,
                 operation: str, from_digest: str, to_digest: str, applier: str) -> None:
        self.api_version = api_version
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.operation = operation
        self.from_digest = from_digest
        self.to_digest = to_digest
        self.applier = applier


class Fit:
    """How well one verified approval fits one change."""

    __slots__ = ("approval", "approvers", "nonce", "problems", "record")

    def __init__(self, approval: str) -> None:
        self.approval = approval
        self.problems: list[Problem] = []
        self.approvers: frozenset[str] = frozenset()
        self.record = ""
        self.nonce = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def fit(verified: VerifiedApproval, change: Change, *, cluster: str, now: datetime,
        max_lifetime: int, record_pattern: str, required: int, used: frozenset[str],
        phase: str, name: str) -> Fit:
    """Every rule of SPEC §4 that depends on the request, the clock or the ledger."""
    result = Fit(name)
    result.problems.extend(p for p in verified.problems if p.code not in UNCOUNTED)
    st = verified.statement or verified.unverified
    if st is None:
        if not result.problems:
            result.problems.append(Problem("no_approval", "no signature verifies"))
        return result
    p = st.predicate
    result.record, result.nonce = p.changeRecord.id, p.nonce
    add = result.problems.append
    if p.operation != change.operation:
        add(Problem("operation_mismatch", f"approval is for {p.operation}, request is "
                                          f"{change.operation}"))
    t = p.target
    if (t.apiVersion, t.kind, t.namespace, t.name) != (
            change.api_version, change.kind, change.namespace, change.name):
        add(Problem("target_mismatch", f"approval names {t.kind} {t.namespace}/{t.name}"))
    elif t.uid != change.uid:
        add(Problem("target_mismatch", f"approval names object uid {t.uid}, the live object is "
                                       f"{change.uid}"))
    if p.fromDigest != change.from_digest:
        add(Problem("digest_mismatch", f"approval starts from {p.fromDigest}, the live object "
                                       f"is {change.from_digest}"))
    if p.toDigest != change.to_digest:
        add(Problem("digest_mismatch", f"approval produces {p.toDigest}, this request "
                                       f"produces {change.to_digest}"))
    # After "is this the change?": for another change, that is the useful answer.
    if p.nonce in used:
        add(Problem("approval_used", f"approval {name} was already used (its nonce is in the "
                                     "ledger); request a new one"))
    elif phase in ("Applied", "Expired"):
        add(Problem("approval_used", f"approval {name} is {phase}"))
    if p.cluster != cluster:
        add(Problem("cluster_mismatch", f"approval is for cluster {p.cluster!r}, this is "
                                        f"{cluster!r}"))
    add_time_problems(st, now, max_lifetime, add)
    if not record_matches(record_pattern, p.changeRecord.id):
        add(Problem("change_record_invalid", f"change record {p.changeRecord.id!r} does not "
                                             f"match {record_pattern}"))
    # The applier, like the requester, never counts; the approval stays valid if enough
    # others signed (SPEC §1: two approvers, neither of whom requested or applies it).
    approvers = verified.approvers - {change.applier}
    result.approvers = approvers
    if len(approvers) < required:
        excluded = [q for q in verified.problems if q.code in UNCOUNTED]
        if change.applier in verified.approvers:
            excluded.insert(0, Problem("applier_approval", f"{change.applier} applies this "
                                                           "change and cannot also approve it"))
        detail = f"{len(approvers)}/{required} approvals"
        if excluded:
            detail += " (" + "; ".join(q.detail for q in excluded) + ")"
        add(Problem(excluded[0].code if excluded else "approvals_insufficient", detail))
    return result


@functools.lru_cache(maxsize=4096)
def record_matches(pattern: str, record: str) -> bool:
    return re.fullmatch(pattern, record) is not None


def add_time_problems(st: Statement, now: datetime, max_lifetime: int, add: Any) -> None:
    issued, expires = st.issued_at, st.expires_at
    if issued > now + CLOCK_SKEW:
        add(Problem("not_yet_valid", f"issued at {st.predicate.issuedAt}, in the future"))
    if now >= expires:
        add(Problem("expired", f"expired at {st.predicate.expiresAt}"))
    if (expires - issued).total_seconds() > max_lifetime:
        add(Problem("lifetime_exceeded", f"lifetime {expires - issued} is over the maximum "
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
    """The approval closest to admitting the change, to explain a denial."""
    candidates = list(fits)
    if len(candidates) <= 1:  # the usual case, on every such denial: nothing to rank
        return candidates[0] if candidates else None
    return min(candidates, key=_closeness)  # the first of the closest, as a stable sort


def _closeness(f: Fit) -> tuple[bool, bool, bool, int, int]:
    return (not f.ok,
            any(q.code in ("target_mismatch", "operation_mismatch") for q in f.problems),
            any(q.code == "digest_mismatch" for q in f.problems),
            -len(f.approvers),
            len(f.problems))


__all__ = ["Change", "ChangeGateError", "Fit", "Problem", "VerificationMemo",
           "VerifiedApproval", "best", "fit", "manifest_digest", "verify_approval"]
