"""ChangeApproval handlers: judge, record use, write the status, tell the story in Events.

One function, ``reconcile``, does it all for one approval, and every trigger calls it:
the approval's own watch events (create, update, and the listing after a restart), a
timer (expiry; a trust store or policy that changed), and a target reaching the digest
(targets.py). It is level-based and idempotent, so running it twice, or concurrently
from two triggers, writes the same thing once:
- the ledger write is idempotent (ledger.record returns what is stored);
- the status is written only when it differs, with the approval's resourceVersion as a
  precondition, so a write derived from an older version of the object loses (409) and
  the event that newer version produced judges it again;
- Events and the target annotation follow only a status write that succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import kopf

from changegate.core.digest import digest
from changegate.core.errors import NotCanonicalError, StatementError
from changegate.core.statement import Statement, parse_time
from changegate.kube import GROUP, PLURAL, VERSION
from changegate.operator import ledger, reviews
from changegate.operator.api import ApiError, object_path
from changegate.operator.context import Context
from changegate.operator.status import (
    MANAGED,
    TERMINAL,
    Assessment,
    assess,
    events,
    status_body,
    unchanged,
)
from changegate.operator.world import World, mapping

LOG = logging.getLogger("changegate.operator")
API_VERSION = f"{GROUP}/{VERSION}"
ANNOTATION = "changegate.io/approval"


def approval_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return object_path(API_VERSION, "ChangeApproval", namespace, name, subresource)


async def reconcile(ctx: Context, body: Mapping[str, Any], world: World,
                    logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    meta = mapping(body.get("metadata"))
    namespace, name, uid = (str(meta.get(k, "")) for k in ("namespace", "name", "uid"))
    old = mapping(body.get("status"))
    if str(old.get("phase") or "") not in MANAGED or reviews.is_review(body):
        return  # a canary or a review owed: its own flow owns the phase
    now = ctx.clock()
    a = assess(world.facts(body, now))
    if a.phase == "Approved" and a.statement is not None and await _landed(ctx, a.statement,
                                                                          world):
        entry = ledger.LedgerEntry(approval=f"{namespace}/{name}", uid=uid,
                                   target=a.statement.subject[0].name,
                                   expiresAt=a.statement.predicate.expiresAt)
        try:
            stored = await ledger.record(ctx.api, ctx.process.namespace, a.nonce, entry, now)
        except ledger.LedgerError as exc:
            # The change is in but its use is not recorded: say so loudly; the next event
            # or timer tick tries again (the webhook still refuses the approval once its
            # status says Applied, and always once it expires).
            logger.error("cannot record the use of %s/%s: %s", namespace, name, exc)
            kopf.warn(cast(kopf.Body, body), reason="LedgerWriteFailed", message=str(exc))
            return
        a = assess(world.facts(body, now, ledger=stored))
    new = status_body(old, a, now, meta.get("generation"))
    ctx.metrics.saw(uid, a.phase)
    if unchanged(old, new):
        return
    try:
        await ctx.api.merge_patch(approval_path(namespace, name, "status"), {
            "metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": new})
    except ApiError as exc:
        if exc.status in (404, 409):  # gone, or changed since: its next event judges again
            logger.debug("status of %s/%s not written (%s)", namespace, name, exc)
            return
        raise
    LOG.info("ChangeApproval %s/%s: %s -> %s", namespace, name, old.get("phase") or "(new)",
             a.phase, extra={"fields": {"record": a.record, "approvers": list(a.approvers)}})
    for kind, reason, message in events(old, new, a, name, namespace):
        post = kopf.warn if kind == "Warning" else kopf.info
        post(cast(kopf.Body, body), reason=reason, message=message)
    if a.phase == "Approved" and old.get("phase") != "Approved":
        _observe_wait(ctx, meta, now)
    if a.phase == "Applied" and old.get("phase") != "Applied":
        await _mark_target(ctx, a, world, namespace, name, logger)


async def _live_target(ctx: Context, st: Statement) -> dict[str, Any] | None:
    t = st.predicate.target
    return await ctx.api.get(object_path(t.apiVersion, t.kind, t.namespace, t.name))


def _at_digest(live: Mapping[str, Any], st: Statement, world: World) -> bool:
    p = st.predicate
    uid = (live.get("metadata") or {}).get("uid")
    if p.operation == "UPDATE" and uid != p.target.uid:
        return False  # the object was replaced: that is not the object that was approved
    policy, _ = world.policy
    if policy is None:
        return False
    try:
        got = digest(live, policy.view_rules,
                     autoscaled=world.autoscaled(p.target.namespace, p.target.kind,
                                                 p.target.name))
    except NotCanonicalError:
        return False
    return got == p.toDigest


async def _landed(ctx: Context, st: Statement, world: World) -> bool:
    """Has the approved change happened? The target is at toDigest (CREATE, UPDATE), or
    the object that was approved for deletion is gone (DELETE)."""
    live = await _live_target(ctx, st)
    if st.predicate.operation == "DELETE":
        return live is None or (live.get("metadata") or {}).get("uid") != st.predicate.target.uid
    return live is not None and _at_digest(live, st, world)


async def _mark_target(ctx: Context, a: Assessment, world: World, namespace: str, name: str,
                       logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Name the approval on the object it changed, and tell that object's Events. The
    annotation is outside the digest (changegate.io/), so the webhook admits this write
    as no_change; ``metadata.uid`` makes the patch fail rather than touch a newer object
    of the same name."""
    st = a.statement
    if st is None or st.predicate.operation == "DELETE":
        return
    live = await _live_target(ctx, st)
    if live is None or not _at_digest(live, st, world):
        return
    value = f"{st.predicate.changeRecord.id} {namespace}/{name} approved-by={','.join(a.approvers)}"
    t = st.predicate.target
    uid = (live.get("metadata") or {}).get("uid")
    try:
        await ctx.api.merge_patch(object_path(t.apiVersion, t.kind, t.namespace, t.name), {
            "metadata": {"uid": uid, "annotations": {ANNOTATION: value}}})
    except ApiError as exc:
        logger.warning("cannot annotate %s %s/%s: %s", t.kind, t.namespace, t.name, exc)
        return
    kopf.info(cast(kopf.Body, live), reason="ChangeApproved",
              message=f"{a.summary} applied under ChangeApproval {name}, approved by "
                      f"{', '.join(a.approvers)}")


def _observe_wait(ctx: Context, meta: Mapping[str, Any], now: datetime) -> None:
    created = meta.get("creationTimestamp")
    if isinstance(created, str):
        try:
            ctx.metrics.wait.observe(max(0.0, (now - parse_time(created)).total_seconds()))
        except StatementError:  # not RFC 3339 UTC: no sample rather than a wrong one
            return


def _live(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    """Approvals the timer still watches: it moves them to Expired (or sees trust change);
    once Applied or Expired nothing can change them, and kopf drops its finalizer. A
    review owed never expires into anything: its signatures come as watch events."""
    phase = str(status.get("phase") or "")
    return phase in MANAGED and phase not in TERMINAL and reviews.LABEL not in labels


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    @kopf.on.event(GROUP, VERSION, PLURAL, id="changeapproval", registry=registry)
    async def changed(type: str | None, body: kopf.Body, uid: str, logger: kopf.Logger,
                      **kwargs: Any) -> None:
        if type == "DELETED":
            ctx.metrics.gone(uid)
            return
        ctx.metrics.saw(uid, str(body.get("status", {}).get("phase") or ""))
        if reviews.is_review(body):
            await reviews.reconcile(ctx, body, World(ctx.process, kwargs), logger)
            return
        await reconcile(ctx, body, World(ctx.process, kwargs), logger)

    @kopf.timer(GROUP, VERSION, PLURAL, id="changeapproval-resync", interval=ctx.resync,
                when=_live, registry=registry)
    async def resync(body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
        await reconcile(ctx, body, World(ctx.process, kwargs), logger)
