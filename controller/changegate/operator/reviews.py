"""Reviews owed (SPEC §7a): a ChangeApproval for exactly a change that got in without two
signatures (a break-glass change, or one nothing explains), signed afterwards.

The operator creates it for the transition it saw (fromDigest -> toDigest of that object,
the manifest of the object as it now is), with its nonce in the ledger *before* the object
exists: it is the record of a used change and can admit nothing, ever. The webhook lets
the operator's account, and only it, create a ChangeApproval naming someone else as
``requestedBy`` when its nonce is already used (core/guards.approval_object).

Approvers sign it with ``changegate approve`` like any other; once enough distinct
eligible approvers (not the requester) have signed, it moves from ``ReviewOwed`` to
``Reviewed``. ``status.review`` says why it is owed; only the operator writes status.

Everything is derived from the object, the ledger and the change, so a second try (after
a crash, or a create the webhook refused because it had not yet seen the ledger write)
writes the same thing: the name and the nonce come from the change itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf

from changegate.core.compose import change_approval, manifest_for, statement_bytes
from changegate.core.digest import hex_of
from changegate.core.errors import StatementError
from changegate.core.policy import Policy, namespace_settings
from changegate.core.statement import format_time, parse_statement, parse_time
from changegate.operator import ledger
from changegate.operator.api import ApiError, object_path
from changegate.operator.context import Context
from changegate.operator.explain import Seen
from changegate.operator.world import World, mapping

LOG = logging.getLogger("changegate.operator.reviews")
API_VERSION = "changegate.io/v1alpha1"
PHASES = frozenset({"ReviewOwed", "Reviewed"})
LABEL = "changegate.io/review"  # the reason, for `kubectl get cga -l changegate.io/review`
MAX_DETAIL = 4096
# The webhook learns of the ledger write from its watch, usually within milliseconds; a
# create it refuses meanwhile is tried again this many times, then left to the next event.
CREATE_ATTEMPTS = 6
CREATE_PAUSE = 0.5
# "... by dana" at the end of a break-glass reason names who used it (see requester()).
_BY = re.compile(r"\bby ([A-Za-z0-9][A-Za-z0-9:@._-]*)\s*$")
_NAME_SAFE = re.compile(r"[^a-z0-9-]+")


def review_name(kind: str, name: str, from_digest: str, to_digest: str) -> str:
    """``review-deployment-checkout-<from 6><to 6>``: one per transition of one object."""
    base = _NAME_SAFE.sub("-", f"{kind.lower()}-{name.lower()}").strip("-")[:200]
    ends = (hex_of(from_digest)[:6] if from_digest != "none" else "none00") + \
        hex_of(to_digest)[:6]
    return f"review-{base}-{ends}"


def review_nonce(namespace: str, kind: str, name: str, from_digest: str,
                 to_digest: str) -> str:
    """The same nonce for the same transition, so a retry finds its own ledger entry."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          f"changegate-review:{namespace}/{kind}/{name}:{from_digest}:{to_digest}"))


def record_id(policy: Policy, reason: str, to_digest: str) -> str:
    """The incident the break-glass reason starts with when it is a valid record id
    (``INC-1 rollback`` -> INC-1), else ``REVIEW-<number from the digest>``."""
    first = reason.split()[0].rstrip(":,;") if reason.split() else ""
    if first and re.fullmatch(policy.changeRecordPattern, first):
        return first
    return f"REVIEW-{int(hex_of(to_digest)[:8], 16)}"


def requester(cause: str, reason: str) -> str:
    """Who the review is owed by. The API keeps no author of a write (managedFields name a
    client, not a person; only the audit log knows), so a break-glass review names the
    user the reason ends with (``... by dana``; `changegate break-glass` stamps it), and
    any other is owed by ``unknown``: the audit log's entry for the write says who."""
    found = _BY.search(reason) if cause == "break-glass" else None
    return found.group(1) if found else "unknown"


def review_body(policy: Policy, obj: Mapping[str, Any], before: Seen | None, now: Seen,
                cause: str, detail: str, at: datetime) -> dict[str, Any]:
    created = before is None or before.uid != now.uid
    from_digest = "none" if created else before.digest  # type: ignore[union-attr]
    api_version = "apps/v1" if now.kind == "Deployment" else "v1"
    approval = change_approval(
        namespace=now.namespace,
        name=review_name(now.kind, now.name, from_digest, now.digest), cluster=policy.clusterName,
        target={"apiVersion": api_version, "kind": now.kind, "name": now.name,
                "uid": "none" if created else now.uid},
        operation="CREATE" if created else "UPDATE", from_digest=from_digest,
        to_digest=now.digest, record_id=record_id(policy, detail if cause == "break-glass"
                                                  else "", now.digest),
        record_url=None, requested_by=requester(cause, detail), issued_at=at,
        expires_at=at + timedelta(seconds=policy.maxApprovalLifetime),
        manifest=manifest_for(obj),
        nonce=review_nonce(now.namespace, now.kind, now.name, from_digest, now.digest))
    approval["metadata"]["labels"] = {LABEL: cause}
    return approval


def reviewed_condition(approvers: list[str], required: int, at: str) -> dict[str, str]:
    done = len(approvers) >= required
    return {"type": "Reviewed", "status": "True" if done else "False",
            "reason": "Reviewed" if done else "ReviewOwed",
            "message": (f"reviewed by {', '.join(approvers)} ({len(approvers)}/{required})"
                        if done else f"{len(approvers)}/{required} approvers have reviewed it"),
            "lastTransitionTime": at}


def review_status(cause: str, detail: str, since: datetime, required: int) -> dict[str, Any]:
    return {"phase": "ReviewOwed", "approvers": [], "approvals": 0, "required": required,
            "review": {"reason": cause, "detail": detail[:MAX_DETAIL],
                       "owedSince": format_time(since)},
            "conditions": [reviewed_condition([], required, format_time(since))]}


async def owe(ctx: Context, world: World, obj: Mapping[str, Any], before: Seen | None,
              now: Seen, cause: str, detail: str) -> str:
    """Create the review owed for this transition (idempotent); returns its name. Raises
    ApiError or ledger.LedgerError when it could not: the caller keeps the transition
    unrecorded, so it is tried again."""
    policy, _ = world.policy
    assert policy is not None
    at = ctx.clock()
    body = review_body(policy, obj, before, now, cause, detail, at)
    name, namespace = body["metadata"]["name"], now.namespace
    st = parse_statement(statement_bytes(body))
    entry = ledger.LedgerEntry(approval=f"{namespace}/{name}", uid="",
                               target=st.subject[0].name, expiresAt=st.predicate.expiresAt)
    await ledger.record(ctx.api, ctx.process.namespace, st.predicate.nonce, entry, at)
    path = object_path(API_VERSION, "ChangeApproval", namespace)
    created: dict[str, Any] | None = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            created = await ctx.api.create(path, body)
            break
        except ApiError as exc:
            if exc.status == 409:  # made before (a retry after a crash): keep that one
                created = await ctx.api.get(f"{path}/{name}")
                break
            # The webhook answers 400 with its reason while it has not yet seen the ledger
            # entry (approval_used / requester_mismatch); anything else is not ours to wait
            # out.
            if exc.status not in (400, 403) or attempt + 1 == CREATE_ATTEMPTS:
                raise
            await asyncio.sleep(CREATE_PAUSE)
    if created is None:
        raise ApiError(404, "NotFound", f"review {namespace}/{name} vanished")
    status = mapping(created.get("status"))
    if not mapping(status.get("review")):
        found = world.namespace(namespace)
        required = namespace_settings(policy, dict(found[1]) if found else {}).required_approvals
        await ctx.api.merge_patch(
            object_path(API_VERSION, "ChangeApproval", namespace, name, "status"),
            {"status": review_status(cause, detail, at, required)})
    LOG.warning("review owed for %s %s/%s (%s): ChangeApproval %s", now.kind, namespace,
                now.name, cause, name, extra={"fields": {"reason": cause, "detail": detail}})
    return str(name)


def is_review(body: Mapping[str, Any]) -> bool:
    """A review owed, whose phase this module owns. The label is set at creation; the
    status.review only the operator writes (the label alone could be removed by anyone
    who may edit the object, the status could not)."""
    status = mapping(body.get("status"))
    labels = mapping(mapping(body.get("metadata")).get("labels"))
    return bool(mapping(status.get("review"))) or LABEL in labels or \
        str(status.get("phase") or "") in PHASES


async def reconcile(ctx: Context, body: Mapping[str, Any], world: World,
                    logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """ReviewOwed <-> Reviewed from the verified signatures; the gauge's view of it."""
    meta = mapping(body.get("metadata"))
    namespace, name, uid = (str(meta.get(k, "")) for k in ("namespace", "name", "uid"))
    old = mapping(body.get("status"))
    review = mapping(old.get("review"))
    if not review:
        return  # owe() writes the status right after the create
    policy, _ = world.policy
    facts = world.facts(body, ctx.clock())
    approvers = sorted(facts.verified.approvers) if facts.verified is not None else []
    required = facts.required
    phase = "Reviewed" if facts.verified is not None and len(approvers) >= required \
        else "ReviewOwed"
    if facts.verified is None:  # the trust store or policy is unusable: keep what was shown
        phase = str(old.get("phase") or "ReviewOwed")
        approvers = list(old.get("approvers") or [])
    since = _since(review)
    deadline = since + timedelta(seconds=policy.reviewDeadline if policy else 24 * 3600)
    ctx.metrics.owed(uid, deadline if phase == "ReviewOwed" else None)
    # The condition keeps its lastTransitionTime while its status stays (retention runs
    # from the time it became Reviewed).
    before = next((c for c in old.get("conditions") or []
                   if isinstance(c, dict) and c.get("type") == "Reviewed"), {})
    condition = reviewed_condition(approvers, required, format_time(ctx.clock()))
    if before.get("status") == condition["status"] and before.get("lastTransitionTime"):
        condition["lastTransitionTime"] = before["lastTransitionTime"]
    if facts.verified is None and before:
        condition = dict(before)
    new = {"phase": phase, "approvers": approvers, "approvals": len(approvers),
           "required": required, "review": dict(review), "conditions": [condition]}
    if all(old.get(k) == v for k, v in new.items()):
        return
    try:
        await ctx.api.merge_patch(
            object_path(API_VERSION, "ChangeApproval", namespace, name, "status"),
            {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": new})
    except ApiError as exc:
        if exc.status in (404, 409):
            return
        raise
    if phase == "Reviewed" and old.get("phase") != "Reviewed":
        kopf.info(cast(kopf.Body, body), reason="Reviewed",
                  message=f"{review.get('reason')} change reviewed by {', '.join(approvers)} "
                          f"({len(approvers)}/{required})")
        logger.info("review %s/%s signed by %s", namespace, name, ", ".join(approvers))


def _since(review: Mapping[str, Any]) -> datetime:
    try:
        return parse_time(str(review.get("owedSince")))
    except StatementError:  # unreadable: owed since long ago, so it shows overdue
        return datetime(2000, 1, 1, tzinfo=UTC)
