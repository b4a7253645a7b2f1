"""`changegate audit` (SPEC §10): the period's record of tier-1 changes, from what the operator
keeps (§7a): ChangeApprovals and their status, nothing else.

- an approval in phase Applied (or Promoted, after a canary) is a change admitted by
  approval, at the time its Applied condition turned True;
- a review owed (phase ReviewOwed, then Reviewed) with ``status.review.reason``
  break-glass or unexplained is a change that got in that way, at ``owedSince``; while
  unsigned it is a review owed, overdue after the policy's ``reviewDeadline``;
- an approval in phase Expired is one that expired unused.

Reading pages through the API (limit/continue), so a long retention never needs one huge
answer. Building the report is pure: it is tested on plain objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from changegate.core.errors import ChangeGateError, StatementError
from changegate.core.statement import format_time, parse_time
from changegate.kube import Kube, approvals_path

PAGE = 250  # items per list call: small answers, a few calls for a month of a busy cluster
ADMITTED_BY = ("approval", "break-glass", "exempt", "unexplained")  # SPEC §10, in this order
APPLIED_PHASES = frozenset({"Applied", "Promoted"})
REVIEW_PHASES = frozenset({"ReviewOwed", "Reviewed"})
REVIEW_REASONS = frozenset({"break-glass", "unexplained"})


def read_approvals(api: Kube, namespace: str | None, *,
                   progress: Callable[[int], None] | None = None, page: int | None = None
                   ) -> tuple[list[dict[str, Any]], datetime]:
    """Every ChangeApproval in ``namespace`` (None: all), page by page, and the API server's
    clock at the first page (ages and overdue reviews are judged by the server's time)."""
    items: list[dict[str, Any]] = []
    token = ""
    server_time: datetime | None = None
    while True:
        query = {"limit": str(page or PAGE)}
        if token:
            query["continue"] = token
        answer = api.call("GET", approvals_path(namespace), query=query)
        server_time = server_time or answer.date
        body = answer.body or {}
        items.extend(i for i in body.get("items") or [] if isinstance(i, dict))
        if progress is not None:
            progress(len(items))
        token = str((body.get("metadata") or {}).get("continue") or "")
        if not token:
            return items, server_time or datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Period:
    start: datetime
    end: datetime

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def parse_moment(text: str) -> datetime:
    """RFC 3339 UTC, or a date (YYYY-MM-DD, midnight UTC)."""
    if len(text) == 10:
        text += "T00:00:00Z"
    try:
        return parse_time(text)
    except StatementError as exc:
        raise ChangeGateError(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 UTC time "
                              "(YYYY-MM-DDTHH:MM:SSZ)") from exc


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except StatementError:
        return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _applied_at(obj: Mapping[str, Any]) -> datetime | None:
    """When the operator saw the change in: the Applied condition's transition to True."""
    status = _mapping(obj.get("status"))
    for cond in status.get("conditions") or []:
        c = _mapping(cond)
        if c.get("type") == "Applied" and c.get("status") == "True":
            return _time(c.get("lastTransitionTime"))
    return None


@dataclass(frozen=True, kw_only=True)
class Record:
    """The fields of one ChangeApproval every section of the report uses."""

    namespace: str
    name: str
    kind: str
    target: str
    operation: str
    from_digest: str
    to_digest: str
    record: str
    requested_by: str
    assistance: str
    approvers: tuple[str, ...]
    phase: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Record:
        meta, spec = _mapping(obj.get("metadata")), _mapping(obj.get("spec"))
        status = _mapping(obj.get("status"))
        target = _mapping(spec.get("target"))
        return cls(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                   kind=str(target.get("kind", "")), target=str(target.get("name", "")),
                   operation=str(spec.get("operation", "")),
                   from_digest=str(spec.get("fromDigest", "")),
                   to_digest=str(spec.get("toDigest", "")),
                   record=str(_mapping(spec.get("changeRecord")).get("id", "")),
                   requested_by=str(spec.get("requestedBy", "")),
                   assistance=str(spec.get("assistance") or ""),
                   approvers=tuple(sorted(str(a) for a in status.get("approvers") or [])),
                   phase=str(status.get("phase") or ""))


def build_report(items: Iterable[Mapping[str, Any]], *, period: Period, now: datetime,
                 seniors: frozenset[str], review_deadline: int) -> dict[str, Any]:
    """The AuditReport of SPEC §10 (``-o json`` prints exactly this)."""
    changes: list[dict[str, Any]] = []
    owed: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    deadline = timedelta(seconds=review_deadline)
    for obj in items:
        r = Record.of(obj)
        status = _mapping(obj.get("status"))
        review = _mapping(status.get("review"))
        if r.phase in APPLIED_PHASES:
            at = _applied_at(obj) or _time(_mapping(obj.get("spec")).get("issuedAt"))
            if at is not None and period.holds(at):
                changes.append(_change(r, at, "approval", seniors))
        elif r.phase in REVIEW_PHASES and review.get("reason") in REVIEW_REASONS:
            since = _time(review.get("owedSince"))
            if since is None or not period.holds(since):
                continue
            # Break-glass and unexplained changes had no approvers; who reviewed them
            # afterwards is the reviews' business, not the admission's.
            changes.append(_change(r, since, str(review["reason"]), seniors, approvers=False))
            if r.phase == "ReviewOwed":
                owed.append({
                    "time": format_time(since), "namespace": r.namespace, "kind": r.kind,
                    "name": r.target, "operation": r.operation,
                    "reason": str(review["reason"]), "detail": str(review.get("detail", "")),
                    "requestedBy": r.requested_by, "approval": f"{r.namespace}/{r.name}",
                    "deadline": format_time(since + deadline),
                    "overdue": now - since > deadline})
        elif r.phase == "Expired":
            ends = _time(_mapping(obj.get("spec")).get("expiresAt"))
            if ends is not None and period.holds(ends):
                expired.append({
                    "time": format_time(ends), "namespace": r.namespace, "kind": r.kind,
                    "name": r.target, "operation": r.operation, "changeRecord": r.record,
                    "requestedBy": r.requested_by, "approvers": _approvers(r, seniors),
                    "assistance": r.assistance or None,
                    "approval": f"{r.namespace}/{r.name}"})
    key = _order
    changes.sort(key=key)
    owed.sort(key=key)
    expired.sort(key=key)
    return {"kind": "AuditReport", "from": format_time(period.start),
            "to": format_time(period.end), "changes": changes, "reviewsOwed": owed,
            "expiredUnused": expired, "counts": _counts(changes, owed, expired)}


def _order(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (str(entry["time"]), str(entry["namespace"]), str(entry["name"]),
            str(entry["approval"]))


def _approvers(r: Record, seniors: frozenset[str]) -> list[dict[str, Any]]:
    return [{"name": name, "senior": name in seniors} for name in r.approvers]


def _change(r: Record, at: datetime, admitted_by: str, seniors: frozenset[str], *,
            approvers: bool = True) -> dict[str, Any]:
    return {"time": format_time(at), "namespace": r.namespace, "kind": r.kind,
            "name": r.target, "operation": r.operation, "fromDigest": r.from_digest,
            "toDigest": r.to_digest, "changeRecord": r.record, "requestedBy": r.requested_by,
            "approvers": _approvers(r, seniors) if approvers else [],
            "assistance": r.assistance or None, "admittedBy": admitted_by,
            "approval": f"{r.namespace}/{r.name}"}


def _counts(changes: list[dict[str, Any]], owed: list[dict[str, Any]],
            expired: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    namespaces = sorted({e["namespace"] for e in (*changes, *owed, *expired)})
    out: dict[str, dict[str, int]] = {}
    for ns in namespaces:
        mine = [c for c in changes if c["namespace"] == ns]
        by = Counter(c["admittedBy"] for c in mine)
        out[ns] = {
            "changes": len(mine),
            **{how: by.get(how, 0) for how in ADMITTED_BY},
            "aiAssisted": sum(1 for c in mine if c["assistance"] == "ai"),
            "reviewsOwed": sum(1 for o in owed if o["namespace"] == ns),
            "reviewsOverdue": sum(1 for o in owed if o["namespace"] == ns and o["overdue"]),
            "expiredUnused": sum(1 for e in expired if e["namespace"] == ns),
        }
    return out


def per_day(report: Mapping[str, Any]) -> list[tuple[str, dict[str, int]]]:
    """Changes per UTC day of the period, by how they got in (for the chart)."""
    start = parse_time(str(report["from"])).date()
    end = parse_time(str(report["to"]))
    last = (end - timedelta(microseconds=1)).date() if end.time() == datetime.min.time() \
        else end.date()
    days: dict[str, dict[str, int]] = {}
    day = start
    while day <= last:
        days[day.isoformat()] = dict.fromkeys(ADMITTED_BY, 0)
        day += timedelta(days=1)
    for change in report["changes"]:
        bucket = days.get(str(change["time"])[:10])
        if bucket is not None:
            bucket[str(change["admittedBy"])] += 1
    return list(days.items())


__all__ = ["ADMITTED_BY", "Period", "build_report", "parse_moment", "per_day",
           "read_approvals"]
