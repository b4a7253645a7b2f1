"""Every digest transition of a gated object in a tier-1 namespace, explained (SPEC §7a).

Called for each watch event of a Deployment or ConfigMap (targets.py), including the
listing kopf makes at every start and every watch restart: so a change made while the
operator was down, or whose event was missed, is compared with the record (record.py)
the next time the object is listed, never forgotten.

A transition is recorded only once what it owes is done: for a break-glass or an
unexplained change, the review owed exists. If that fails (the API server or the webhook
refused), the object stays at its old record and is tried again (``retry``); the
counter and the Event are given once per transition and process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from changegate.core.policy import BUILT_IN_EXEMPT, Policy, namespace_settings
from changegate.operator import events, explain, reviews
from changegate.operator.api import ApiError, object_path
from changegate.operator.approvals import approval_path, reconcile
from changegate.operator.context import Context
from changegate.operator.ledger import LedgerError
from changegate.operator.world import World, mapping

LOG = logging.getLogger("changegate.operator.changes")


def is_exempt(policy: Policy, kind: str, namespace: str, name: str) -> bool:
    """An object some exemptWriters entry names. Who wrote it the API does not say, so the
    entry's identity cannot be checked here: the name is what the exemption is about."""
    return any(kind in w.kinds and ("*" in w.namespaces or namespace in w.namespaces)
               and any(fnmatchcase(name, p) for p in w.names)
               for w in (*BUILT_IN_EXEMPT, *policy.exemptWriters))


async def _approvals(ctx: Context, world: World, now: explain.Seen) -> list[dict[str, str]]:
    """The index's approvals for this object. One that names the digest the object now has
    but does not show a phase that admits it is judged first (after a restart its status
    may be older than its signatures) and read fresh (the index may lag the status)."""
    out = []
    for a in world.approvals_for(now.namespace, now.kind, now.name):
        if a.get("toDigest") == now.digest and a.get("phase") not in explain.ADMITTING:
            path = approval_path(now.namespace, a["name"])
            fresh = await ctx.api.get(path)
            if fresh is not None and not reviews.is_review(fresh):
                await reconcile(ctx, fresh, world, LOG)
                fresh = await ctx.api.get(path)
            a = {**a, "phase": str(mapping(mapping(fresh).get("status")).get("phase") or "")}
        out.append(a)
    return out


async def observe(ctx: Context, world: World, event_type: str | None, body: Mapping[str, Any],
                  kind: str, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    record = ctx.record
    policy, _ = world.policy
    meta = mapping(body.get("metadata"))
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if record is None or not record.loaded or policy is None or not namespace:
        return
    found = world.namespace(namespace)
    if namespace in (ctx.process.namespace, "kube-system") or found is None \
            or not policy.selects(dict(found[0])):
        return
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        # The deletion itself is judged by admission; the record forgets the object.
        record.drop(kind, namespace, name)
        ctx.retry.pop((kind, namespace, name), None)
        return
    now = explain.seen(body, kind, policy, world.autoscaled(namespace, kind, name),
                       ctx.server_version)
    if now is None:
        return
    if namespace not in record.since:
        await onboard(ctx, world, namespace)
        if record.get(kind, namespace, name) is None:  # listed: it was there before
            record.put(now)
            return
    # One transition at a time per object: the watch and the retry loop may both be here.
    async with record.lock(f"{kind}/{namespace}/{name}"):
        await _transition(ctx, world, body, now, found, logger)


async def _transition(ctx: Context, world: World, body: Mapping[str, Any], now: explain.Seen,
                      found: tuple[Mapping[str, str], Mapping[str, str]],
                      logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    record, (policy, _) = ctx.record, world.policy
    assert record is not None and policy is not None
    kind, namespace, name = now.kind, now.namespace, now.name
    before = record.get(kind, namespace, name)
    if before is not None and before.uid == now.uid and before.digest == now.digest:
        record.put(now)  # same state; keeps the break-glass value and the write time current
        return
    why = explain.explain(before, now, body, policy=policy,
                          approvals=await _approvals(ctx, world, now),
                          warn_mode=namespace_settings(policy, dict(found[1])).mode == "warn",
                          exempt=is_exempt(policy, kind, namespace, name))
    key = (kind, namespace, name)
    if why.cause in ("break-glass", "unexplained"):
        if ctx.retry.get(key) != now.digest:  # told once per transition, not per try
            await _tell(ctx, body, now, why)
        ctx.retry[key] = now.digest
        try:
            review = await reviews.owe(ctx, world, body, before, now, why.cause, why.detail)
        except (ApiError, LedgerError) as exc:
            logger.error("cannot create the review owed for %s %s/%s: %s (tried again)",
                         kind, namespace, name, exc)
            return
        ctx.retry.pop(key, None)
        await events.post(ctx, body, "Normal", "ReviewOwed",
                          f"a review is owed: ChangeApproval {review} "
                          f"(changegate approve {review} -n {namespace})")
    elif why.cause == "warn":
        await events.post(ctx, body, "Warning", "WouldDeny",
                          f"deny mode would have refused this change: {why.detail}")
    else:
        LOG.info("%s %s/%s changed (%s: %s)", kind, namespace, name, why.cause, why.detail)
    record.put(now)


async def onboard(ctx: Context, world: World, namespace: str) -> None:
    """A namespace seen tier-1 for the first time: record every gated object in it as it
    is (a baseline). From then on an object the record lacks was created since, and its
    creation is a transition to explain like any other."""
    record = ctx.record
    if record is None:
        return
    async with record.lock(f"namespace/{namespace}"):
        if namespace in record.since:
            return
        policy, _ = world.policy
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "ConfigMap")):
            listing = await ctx.api.get(object_path(api_version, kind, namespace))
            for item in (listing or {}).get("items") or []:
                # A list's items carry no apiVersion and kind, which the digest's view has.
                item = {**item, "apiVersion": api_version, "kind": kind}
                name = str(mapping(item.get("metadata")).get("name") or "")
                now = explain.seen(item, kind, policy, world.autoscaled(namespace, kind, name),
                                   ctx.server_version) if policy is not None else None
                if now is not None and record.get(kind, namespace, name) is None:
                    record.put(now)
        record.watched_since(namespace, ctx.clock())
    LOG.info("namespace %s: gated objects recorded as they are", namespace)


async def _tell(ctx: Context, body: Mapping[str, Any], now: explain.Seen,
                why: explain.Explanation) -> None:
    if why.cause == "unexplained":
        ctx.metrics.unexplained.labels(now.namespace, now.kind).inc()
        LOG.warning("unexplained change: %s", why.detail)
        await events.post(ctx, body, "Warning", "UnexplainedChange",
                          f"no approval or break-glass explains this change: {why.detail}")
    else:
        await events.post(ctx, body, "Warning", "BreakGlass",
                          f"changed under break-glass: {why.detail}")
