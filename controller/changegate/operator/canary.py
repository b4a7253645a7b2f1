"""The canary gate's operator side (SPEC §7): gather the facts, let core.canary decide,
do what it says, record it.

Every trigger (the ChangeApproval's own events, a short timer while a run is live) calls
``reconcile``, which is level-based: the facts come from the API (the approval and its
status, the canary Deployment and its pods, the main Deployment, the ledger) and the
clock, never from memory, so an operator that restarts mid-bake resumes the run. Status
writes carry the approval's resourceVersion, so of two concurrent reconciles one wins and
the other sees the newer object; a run's end (CanaryFailed or Applied) is written once,
and the metric and the Event follow only that write. A lock per approval keeps this
process from racing itself (event and timer at once).

The operator has no bypass: it creates the canary, and promotes by writing the approved
manifest to the Deployment, through the webhook like anyone (the webhook admits these
writes only for a qualifying approval and a canary that passed).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, cast
from urllib.parse import quote

import kopf

from changegate.core import canary as machine
from changegate.core.digest import digest
from changegate.core.errors import NotCanonicalError
from changegate.core.policy import namespace_settings
from changegate.core.statement import Statement, format_time
from changegate.kube import GROUP, PLURAL, VERSION
from changegate.operator import ledger
from changegate.operator.api import ApiError, object_path
from changegate.operator.context import Context
from changegate.operator.status import FATAL, assess, read_statement
from changegate.operator.world import World, mapping

LOG = logging.getLogger("changegate.operator.canary")
TICK_SECONDS = 2.0  # how often a live run looks at its canary: the bake's resolution
FIELD_MANAGER = "changegate-operator"
ENDED = frozenset({machine.FAILED, "Applied", "Expired", "Rejected"})
SERVER_FIELDS = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid",
                 "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
Logger = logging.Logger | logging.LoggerAdapter[Any]


class Runs:
    """This run's instruments and locks (one per operator run; tests run several)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.total = ctx.metrics.canary_runs  # defined once, with the operator's others
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self._locks.pop(uid, None)


def is_canary(spec: Mapping[str, Any]) -> bool:
    return mapping(spec.get("rollout")).get("strategy") == "canary"


def _deployment_path(namespace: str, name: str) -> str:
    return object_path("apps/v1", "Deployment", namespace, name)


async def _pods(ctx: Context, dep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The canary's pods: its selector always carries the canary label (build_canary)."""
    meta = mapping(dep.get("metadata"))
    labels = mapping(mapping(mapping(dep.get("spec")).get("selector")).get("matchLabels"))
    if not labels:
        return []
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    path = (f"/api/v1/namespaces/{quote(str(meta.get('namespace', '')), safe='')}/pods"
            f"?labelSelector={quote(selector, safe='')}")
    found = await ctx.api.request("GET", path)
    items = found.get("items") if isinstance(found, dict) else None
    return [p for p in items or [] if isinstance(p, dict)]


def _at(live: Mapping[str, Any] | None, st: Statement, world: World, which: str) -> bool:
    p = st.predicate
    if live is None or mapping(live.get("metadata")).get("uid") != p.target.uid:
        return False
    policy, _ = world.policy
    if policy is None:
        return False
    try:
        got = digest(live, policy.view_rules,
                     autoscaled=world.autoscaled(p.target.namespace, "Deployment",
                                                 p.target.name))
    except NotCanonicalError:
        return False
    return got == (p.toDigest if which == "to" else p.fromDigest)


async def reconcile(runs: Runs, body: Mapping[str, Any], world: World, logger: Logger) -> None:
    spec, meta = mapping(body.get("spec")), mapping(body.get("metadata"))
    if not is_canary(spec):
        return
    async with runs.lock(str(meta.get("uid", ""))):
        # A copy, read once the lock is held: a timer's body is a live view that kopf
        # updates as events arrive, and the status write's resourceVersion precondition
        # must be the version these facts were read from, or a stale step would win.
        await _reconcile(runs, copy.deepcopy(dict(body)), world, logger)


async def _reconcile(runs: Runs, body: Mapping[str, Any], world: World,
                     logger: Logger) -> None:
    ctx = runs.ctx
    spec, meta = mapping(body.get("spec")), mapping(body.get("metadata"))
    namespace, name, uid = (str(meta.get(k, "")) for k in ("namespace", "name", "uid"))
    status = mapping(body.get("status"))
    phase = str(status.get("phase") or "")
    policy, _ = world.policy
    written, _ = read_statement(spec, namespace)
    if policy is None or written is None:
        return  # cannot judge: the approvals flow says why in the conditions
    target = written.predicate.target.name
    canary_path = _deployment_path(namespace, machine.canary_name(target))
    if phase in ENDED:
        live_canary = await ctx.api.get(canary_path)
        if machine.owner_uid(live_canary) == uid:  # a run that ended leaves no canary
            await _delete(ctx, canary_path, uid, logger)
        return
    found = world.namespace(namespace)
    settings = namespace_settings(policy, dict(found[1]) if found else {})
    now = ctx.clock()
    a = assess(world.facts(body, now))
    st = a.statement or written
    fatal = [p for p in a.problems if p.code in FATAL and p.code != "approval_used"]
    annotations = mapping(meta.get("annotations"))
    facts = machine.Facts(
        phase=phase, progress=mapping(status.get("canary")),
        canary_mode=settings.mode == "canary", operation=st.predicate.operation,
        valid=a.statement is not None and not fatal,
        invalid=fatal[0].detail if fatal else "no signature verifies yet",
        approvals=len(a.approvers), min_approvals=policy.canaryMinApprovals,
        complete=a.phase == "Approved", required=a.required,
        expired=now >= st.expires_at,
        used=next((p.detail for p in a.problems if p.code == "approval_used"), ""),
        aborted=str(annotations.get(machine.ABORT_ANNOTATION) or ""),
        canary=None, target_at_to=False, target_at_from=True,
        bake=machine.bake_seconds(st), now=now, deleted=bool(meta.get("deletionTimestamp")))
    if phase not in (machine.RUNNING, machine.PROMOTED) and machine.step(facts).action == "none":
        return  # not starting: no need to read the canary or the Deployment (every tick)
    live_canary = await ctx.api.get(canary_path)
    owned = live_canary is not None and machine.owner_uid(live_canary) == uid
    if live_canary is not None:
        pods = await _pods(ctx, live_canary) if owned else []
        deadline = mapping(live_canary.get("spec")).get("progressDeadlineSeconds")
        want = machine.replicas_for(st, policy)
        got = mapping(live_canary.get("spec")).get("replicas")
        facts = replace(facts, canary=machine.Canary(
            owned, machine.observe(live_canary, pods),
            int(deadline) if isinstance(deadline, int) else machine.DEFAULT_PROGRESS_DEADLINE,
            "" if got == want else
            f"the canary was scaled to {got} replicas; the approval allows {want}"))
    main = await ctx.api.get(_deployment_path(namespace, target))
    facts = replace(facts, target_at_to=_at(main, st, world, "to"),
                    target_at_from=_at(main, st, world, "from"))
    step = machine.step(facts)
    if step.action == "none":
        return
    if step.action == "wait" and not step.phase:
        logger.debug("canary %s/%s waits: %s", namespace, name, step.message)
        return
    if step.action == "create" and not owned:
        replicas = machine.replicas_for(st, policy)
        manifest = mapping(spec.get("manifest"))
        obj = machine.build_canary(manifest, name, uid, replicas)
        try:
            await ctx.api.create(_deployment_path(namespace, ""), obj)
        except ApiError as exc:
            if exc.status != 409:  # 409: created by an earlier try; the next tick judges it
                logger.warning("cannot create canary for %s/%s: %s", namespace, name, exc)
                kopf.warn(cast(kopf.Body, body), reason="CanaryNotCreated", message=str(exc))
                return
    progress = dict(step.progress)
    if step.action == "create":
        progress.update(name=machine.canary_name(target),
                        replicas=machine.replicas_for(st, policy))
    if step.action == "finish":
        stored = await _record(ctx, st, namespace, name, uid, now, body, logger)
        if stored is None or stored.approval != f"{namespace}/{name}":
            return  # not recorded, or used by another approval: the next tick judges
    if step.result:
        progress["result"] = step.result
    outcome = await _write_status(ctx, body, step, progress, now, logger)
    if outcome == "lost":
        return
    if step.action == "promote" and phase == machine.PROMOTED:
        # Promoted is stored (the webhook admits the write only then): write the manifest.
        await _promote(ctx, manifest=mapping(spec.get("manifest")), namespace=namespace,
                       target=target, logger=logger)
    if outcome != "written":
        return
    LOG.info("canary %s/%s: %s (%s: %s)", namespace, name, step.phase, step.reason,
             step.message)
    if step.action in ("fail", "finish"):
        await _delete(ctx, canary_path, uid, logger)
        runs.total.labels(step.result).inc()
        if step.action == "fail":
            kopf.warn(cast(kopf.Body, body), reason="CanaryFailed",
                      message=f"{step.reason}: {step.message}"[:1024])
        else:
            kopf.info(cast(kopf.Body, body), reason="CanaryPromoted",
                      message=f"{machine.canary_name(target)} passed; Deployment {target} "
                              f"is at {st.predicate.toDigest}; approval used")
    elif step.action == "create":
        kopf.info(cast(kopf.Body, body), reason="CanaryStarted",
                  message=f"{machine.canary_name(target)} runs the proposed template "
                          f"({progress['replicas']} replica(s)) with {len(a.approvers)} "
                          f"approval(s)")


async def _record(ctx: Context, st: Statement, namespace: str, name: str, uid: str,
                  now: datetime,
                  body: Mapping[str, Any], logger: Logger) -> ledger.LedgerEntry | None:
    entry = ledger.LedgerEntry(approval=f"{namespace}/{name}", uid=uid,
                               target=st.subject[0].name, expiresAt=st.predicate.expiresAt)
    try:
        return await ledger.record(ctx.api, ctx.process.namespace, st.predicate.nonce, entry,
                                   now)
    except ledger.LedgerError as exc:
        logger.error("cannot record the use of %s/%s: %s", namespace, name, exc)
        kopf.warn(cast(kopf.Body, body), reason="LedgerWriteFailed", message=str(exc))
        return None


def _conditions(old: Mapping[str, Any], step: machine.Step, now: str) -> list[dict[str, Any]]:
    """The stored conditions with the ``Canary`` one set (others are the approvals flow's)."""
    out = [dict(c) for c in old.get("conditions") or [] if isinstance(c, dict)
           and c.get("type") != "Canary"]
    status = {"fail": "False", "finish": "True"}.get(step.action, "Unknown")
    prev = next((c for c in old.get("conditions") or [] if isinstance(c, dict)
                 and c.get("type") == "Canary"), {})
    since = prev.get("lastTransitionTime") if prev.get("status") == status else None
    out.append({"type": "Canary", "status": status, "reason": step.reason,
                "message": step.message[:1024], "lastTransitionTime": since or now})
    return out


async def _write_status(ctx: Context, body: Mapping[str, Any], step: machine.Step,
                        progress: Mapping[str, Any], now: datetime, logger: Logger) -> str:
    """"written", "unchanged", or "lost" (the approval changed or went since it was read:
    its next event judges it again)."""
    meta, old = mapping(body.get("metadata")), mapping(body.get("status"))
    new = {"phase": step.phase, "canary": dict(progress),
           "conditions": _conditions(old, step, format_time(now))}
    if old.get("phase") == new["phase"] and old.get("canary") == new["canary"] and (
            _canary_condition(old) == _canary_condition(new)):
        return "unchanged"
    path = object_path(f"{GROUP}/{VERSION}", "ChangeApproval", str(meta.get("namespace")),
                       str(meta.get("name")), "status")
    try:
        await ctx.api.merge_patch(path, {"metadata": {"resourceVersion": meta.get(
            "resourceVersion")}, "status": new})
    except ApiError as exc:
        if exc.status in (404, 409):
            logger.debug("canary status of %s not written (%s)", meta.get("name"), exc)
            return "lost"
        raise
    return "written"


def _canary_condition(status: Mapping[str, Any]) -> tuple[Any, ...]:
    c = next((c for c in status.get("conditions") or [] if isinstance(c, dict)
              and c.get("type") == "Canary"), {})
    return c.get("status"), c.get("reason"), c.get("message")


async def _delete(ctx: Context, path: str, uid: str, logger: Logger) -> None:
    """Delete the canary, and only ours: ``preconditions.uid`` is the canary's own uid,
    read just before, so a Deployment created under the same name since is untouched."""
    live = await ctx.api.get(path)
    if live is None or machine.owner_uid(live) != uid:
        return
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
            "preconditions": {"uid": mapping(live.get("metadata")).get("uid")}}
    try:
        await ctx.api.request("DELETE", path, body)
    except ApiError as exc:
        if exc.status not in (404, 409):
            logger.warning("cannot delete the canary %s: %s", path, exc)


async def _promote(ctx: Context, *, manifest: Mapping[str, Any], namespace: str, target: str,
                   logger: Logger) -> None:
    """Write the signed manifest over the Deployment, exactly as `changegate apply` writes
    a manifest (a whole update guarded by the live resourceVersion and uid)."""
    path = _deployment_path(namespace, target)
    live = await ctx.api.get(path)
    if live is None:
        return
    out = copy.deepcopy(dict(manifest))
    out.pop("status", None)
    m = out.setdefault("metadata", {})
    for key in SERVER_FIELDS:
        m.pop(key, None)
    lm = mapping(live.get("metadata"))
    m.update(resourceVersion=lm.get("resourceVersion"), uid=lm.get("uid"))
    try:
        await ctx.api.request("PUT", f"{path}?fieldManager={FIELD_MANAGER}", out)
    except ApiError as exc:
        # Denied (the webhook's cache may not show Promoted yet) or a conflict: the next
        # tick tries again, until the approval expires (a log line, not an Event per try).
        logger.warning("promotion of %s/%s not admitted yet: %s", namespace, target, exc)


def _live(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return is_canary(spec) and str(status.get("phase") or "") not in ENDED


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    runs = Runs(ctx)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="canary", registry=registry)
    async def changed(type: str | None, body: kopf.Body, uid: str, logger: kopf.Logger,
                      **kwargs: Any) -> None:
        if type == "DELETED":
            await _gone(runs, body, logger)
            runs.forget(uid)
            return
        await reconcile(runs, body, World(ctx.process, kwargs), logger)

    @kopf.timer(GROUP, VERSION, PLURAL, id="canary-tick", interval=TICK_SECONDS, when=_live,
                registry=registry)
    async def tick(body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
        await reconcile(runs, body, World(ctx.process, kwargs), logger)


async def _gone(runs: Runs, body: kopf.Body, logger: Logger) -> None:
    """Deleted with its run live (no finalizer held it for a last reconcile): the owner
    reference makes the garbage collector delete the canary; the operator does it at once
    and counts the run."""
    spec, meta = mapping(body.get("spec")), mapping(body.get("metadata"))
    phase = str(mapping(body.get("status")).get("phase") or "")
    if not is_canary(spec) or phase not in (machine.RUNNING, machine.PROMOTED):
        return
    target = mapping(spec.get("target")).get("name")
    namespace = str(meta.get("namespace"))
    await _delete(runs.ctx, _deployment_path(namespace, machine.canary_name(str(target))),
                  str(meta.get("uid")), logger)
    runs.total.labels("deleted").inc()
    kopf.warn(body, reason="CanaryFailed",
              message=f"ApprovalDeleted: {meta.get('name')} was deleted during its canary")
