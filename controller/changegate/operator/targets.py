"""Gated objects (Deployments, ConfigMaps) in tier-1 namespaces: did an approved change land?

Only ``kopf.on.event`` handlers watch these kinds, never on.create/update/resume, timers or
daemons: for watching alone kopf keeps no diff-base annotation, no progress annotation
and no finalizer, so the operator writes nothing on objects it merely watches (anything
it wrote outside ``changegate.io/`` would change every object's digest).

A watch event only *points* at approvals to judge: the ones the approvals index names
for this object, Approved, whose digest the object now has (or, for a DELETE, whose
object is gone). The approval is then read fresh and judged by approvals.reconcile,
which reads the object again: the event body is never trusted as the final word.
"""

from __future__ import annotations

from typing import Any

import kopf

from changegate.core.digest import digest
from changegate.core.errors import NotCanonicalError
from changegate.operator.approvals import approval_path, reconcile
from changegate.operator.changes import observe, onboard
from changegate.operator.context import Context
from changegate.operator.world import World

GATED = (("apps", "v1", "deployments", "Deployment"), ("", "v1", "configmaps", "ConfigMap"))


def _digest(body: kopf.Body, world: World, namespace: str, kind: str, name: str) -> str | None:
    policy, _ = world.policy
    if policy is None:
        return None
    try:
        return digest(body, policy.view_rules,
                      autoscaled=world.autoscaled(namespace, kind, name))
    except NotCanonicalError:
        return None


def candidates(world: World, event_type: str | None, body: kopf.Body, namespace: str,
               kind: str, name: str) -> list[str]:
    """Names of the Approved approvals this event may have completed."""
    pending = [c for c in world.approvals_for(namespace, kind, name) if c["phase"] == "Approved"]
    if not pending:
        return []
    gone = event_type == "DELETED" or bool(body.get("metadata", {}).get("deletionTimestamp"))
    uid = str(body.get("metadata", {}).get("uid", ""))
    now = None if gone else _digest(body, world, namespace, kind, name)
    hits = []
    for c in pending:
        if c["operation"] == "DELETE":
            hit = (gone and uid == c["targetUid"]) or (not gone and uid != c["targetUid"])
        else:
            hit = now is not None and now == c["toDigest"]
        if hit:
            hits.append(c["name"])
    return hits


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    for group, version, plural, kind in GATED:
        _register_kind(registry, ctx, group, version, plural, kind)

    # An event handler only, like the targets': kopf writes nothing on namespaces.
    @kopf.on.event("namespaces", id="tier1-namespaces", registry=registry)
    async def namespace_changed(type: str | None, name: str, labels: kopf.Labels,
                                **kwargs: Any) -> None:
        world = World(ctx.process, kwargs)
        policy, _ = world.policy
        if type == "DELETED" or policy is None or not policy.selects(dict(labels)) \
                or name in (ctx.process.namespace, "kube-system"):
            return
        if ctx.record is not None and ctx.record.loaded:
            await onboard(ctx, world, name)


def _register_kind(registry: kopf.OperatorRegistry, ctx: Context, group: str, version: str,
                   plural: str, kind: str) -> None:
    resource = (f"{group}/{version}" if group else version, plural)

    @kopf.on.event(*resource, id=f"target-{plural}", registry=registry)
    async def target_changed(type: str | None, body: kopf.Body, namespace: str | None,
                             name: str, logger: kopf.Logger, **kwargs: Any) -> None:
        world = World(ctx.process, kwargs)
        if not namespace or not world.is_tier1(namespace):
            return
        for approval in candidates(world, type, body, namespace, kind, name):
            fresh = await ctx.api.get(approval_path(namespace, approval))
            if fresh is not None:
                await reconcile(ctx, fresh, world, logger)
        # After the approvals: an approval this event completed is then Applied in the
        # index the explanation reads (or still Approved: either explains the change).
        await observe(ctx, world, type, body, kind, logger)
