"""The admission webhook's HTTP side: `POST /validate` (HTTPS) and the probes and metrics
(plain HTTP, second port). Everything it decides comes from the pure core's `decide()`.

Fail closed, always with a reason: an exception, a cache not yet synced, or the internal
deadline each answer a denial (reason codes `internal_error`, `cache_not_ready`,
`deadline_exceeded`), never an allow. Only a body that is no AdmissionReview at all is
answered with an HTTP error (400, 413): there is no uid to answer to, and the API server
applies failurePolicy Fail to it.

`decide()` runs inline on the event loop. It is synchronous and takes 0.04-0.1 ms on the
fixtures; a thread executor round trip costs ~0.05 ms (measured), as much again, and buys
nothing: the GIL keeps the work on one core either way. The deadline
still holds: `asyncio.timeout_at` guards each await that can wait (a body still arriving,
the read-through), and the time is checked again after deciding, because a timeout cannot
interrupt synchronous code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import orjson
from aiohttp import web

from changegate import logs
from changegate.config import ServeConfig
from changegate.core.decision import Context, decide
from changegate.core.errors import ReviewError
from changegate.core.reasons import ReasonCode
from changegate.core.review import AdmissionRequest, build_response, parse_review
from changegate.core.snapshot import ApprovalObject, NamespaceInfo, Snapshot
from changegate.core.verdict import Decision, Verdict
from changegate.webhook import metrics

log = logging.getLogger("changegate.webhook")

VALIDATE_PATH = "/validate"

# Denials that a ChangeApproval created a moment ago could turn into an allow: the only
# ones worth one bounded read-through to the API server (DESIGN.md).
READ_THROUGH_CODES = frozenset({ReasonCode.NO_APPROVAL, ReasonCode.APPROVALS_INSUFFICIENT,
                                ReasonCode.RECORD_INCOMPLETE,
                                ReasonCode.SENIOR_APPROVAL_REQUIRED})
# At most this long for the read-through, and never closer than MARGIN to the deadline:
# the answer itself (a denial, most likely) must still get out in time.
READ_THROUGH_SECONDS = 1.5
MARGIN_SECONDS = 0.5


class StateSource(Protocol):
    """What the webhook reads: the cache (kube watches) or a directory (--static)."""

    @property
    def ready(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...

    def not_ready_reason(self) -> str: ...

    def may_read_through(self, namespace: str) -> bool:
        """False when read_through would surely give None now: skip it, and its timer."""

    async def read_through(self, namespace: str, timeout: float
                           ) -> tuple[ApprovalObject, ...] | None: ...

    def may_look_up_namespace(self, name: str) -> bool:
        """False when look_up_namespace would surely give None now."""

    async def look_up_namespace(self, name: str, timeout: float) -> NamespaceInfo | None:
        """A namespace the snapshot does not hold, from the API server (None: unknown)."""


def _key_set(approvals: tuple[ApprovalObject, ...]) -> frozenset[tuple[str, str]]:
    return frozenset((a.uid, a.resource_version) for a in approvals)


class Webhook:
    def __init__(self, source: StateSource, config: ServeConfig, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.source = source
        self.config = config
        # One memo for the process: a ChangeApproval version (as watched, never as a
        # request states it) is verified once per trust-store version. Nothing a request
        # carries is remembered for another (SPEC §5: any pod can send a forged review).
        self.context = Context()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.read_throughs = 0
        self.namespace_lookups = 0

    # -- POST /validate -----------------------------------------------------------------
    async def validate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + self.config.deadline_seconds
        limit = self.config.max_body_bytes
        length = request.content_length
        try:
            if length is not None and length > limit:  # refused before reading any of it
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
            # client_max_size (make_app) stops a chunked body without a length, too.
            async with asyncio.timeout_at(deadline_at):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.observe_bad_request(time.perf_counter() - started)
            raise
        except TimeoutError:
            metrics.observe_bad_request(time.perf_counter() - started)
            return web.Response(status=408, text="changegate: request body not received "
                                                 "within the deadline\n")
        try:
            review = parse_review(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            return self._bad_request(f"malformed JSON: {exc}", started)
        except ReviewError as exc:
            return self._bad_request(f"not an AdmissionReview: {exc}", started)
        decision = await self._decide_guarded(review, loop, deadline_at)
        seconds = time.perf_counter() - started
        body_out = self._response(review.uid, decision)
        namespace = review.name if review.resource == "namespaces" else review.namespace
        try:
            metrics.observe_decision(decision, seconds, namespace=namespace,
                                     snapshot=self.source.snapshot())
            # Written and flushed before the answer goes out (logs.setup): no decision is
            # ever acted on without its record.
            logs.audit(decision, review, uid=review.uid, seconds=seconds)
        except Exception:  # the answer is decided: a counting or logging bug must not undo it
            log.exception("recording the decision failed", extra={"fields": {
                "uid": review.uid, "decision": decision.outcome, "reason": decision.code}})
        return web.Response(body=body_out, content_type="application/json")

    def _bad_request(self, reason: str, started: float) -> web.Response:
        metrics.observe_bad_request(time.perf_counter() - started)
        log.warning("bad admission request", extra={"fields": {"error": reason[:300]}})
        return web.Response(status=400, text=f"changegate: {reason}\n")

    @staticmethod
    def _response(uid: str, decision: Decision) -> bytes:
        return orjson.dumps(build_response(
            uid, allowed=decision.allowed, message=decision.message,
            warnings=decision.warnings, audit=decision.audit))

    async def _decide_guarded(self, review: AdmissionRequest, loop: asyncio.AbstractEventLoop,
                              deadline_at: float) -> Decision:
        try:
            if not self.source.ready:
                return self.fault(review, ReasonCode.CACHE_NOT_READY,
                                  f"the webhook has not loaded its state yet "
                                  f"({self.source.not_ready_reason()}); retry in a few seconds")
            snap = self.source.snapshot()
            if (review.namespace and review.namespace not in snap.namespaces
                    and self.source.may_look_up_namespace(review.namespace)):
                snap = await self._with_namespace(review.namespace, snap, loop, deadline_at)
            now = self.clock()
            decision = decide(review, snap, now, self.context)
            # Only where a fresher approval could change the answer: a denial, or a dry-run
            # (preflight) asking whether the real write would be denied. warn mode admits
            # either way, and a consistent LIST takes ~100 ms: not for every write there.
            if (decision.code in READ_THROUGH_CODES
                    and (decision.outcome == "denied"
                         or (review.dry_run and decision.outcome == "warned"))
                    and self.source.may_read_through(review.namespace)):
                decision = await self._read_through(review, snap, now, decision,
                                                    loop.time(), deadline_at)
        except TimeoutError:
            return self.fault(review, ReasonCode.DEADLINE_EXCEEDED,
                              f"no decision within the webhook's deadline of "
                              f"{self.config.deadline_seconds:g} s")
        except Exception:  # fail closed, and say so
            log.exception("decision failed", extra={"fields": {"uid": review.uid}})
            return self.fault(review, ReasonCode.INTERNAL_ERROR,
                              "the webhook failed while deciding (see its log); retry, and "
                              "tell the changegate operators if it persists")
        if loop.time() > deadline_at:
            # decide() is synchronous: a timeout cannot cut it short, so check afterwards.
            return self.fault(review, ReasonCode.DEADLINE_EXCEEDED,
                              f"the decision took longer than the webhook's deadline of "
                              f"{self.config.deadline_seconds:g} s")
        return decision

    async def _with_namespace(self, name: str, snap: Snapshot,
                              loop: asyncio.AbstractEventLoop, deadline_at: float) -> Snapshot:
        """SPEC §5: a namespace the cache has not seen is looked up once within the
        deadline; while it stays unknown the decision denies (never judged by defaults)."""
        budget = min(READ_THROUGH_SECONDS, deadline_at - loop.time() - MARGIN_SECONDS)
        if budget <= 0.05:
            return snap
        async with asyncio.timeout_at(deadline_at):
            info = await self.source.look_up_namespace(name, budget)
        if info is None:
            return snap
        self.namespace_lookups += 1
        # Only this decision sees it (as with the read-through below). The copy costs ~50 us
        # per 10,000 namespaces, and only a namespace that exists but was not yet watched.
        return dataclasses.replace(snap, namespaces={**snap.namespaces, name: info})

    async def _read_through(self, review: AdmissionRequest, snap: Snapshot, now: datetime,
                            decision: Decision, at: float, deadline_at: float) -> Decision:
        budget = min(READ_THROUGH_SECONDS, deadline_at - at - MARGIN_SECONDS)
        if budget <= 0.05:
            return decision
        async with asyncio.timeout_at(deadline_at):  # the only await of a decision
            fresh = await self.source.read_through(review.namespace, budget)
        known = snap.approvals_in(review.namespace)
        if fresh is None or _key_set(fresh) == _key_set(known):
            return decision
        # Only this decision sees the fresher list; the watch brings it to the cache.
        # Merging here could regress objects the watch already updated.
        self.read_throughs += 1
        overlay = dict(snap.approvals)
        overlay[review.namespace] = fresh
        return decide(review, dataclasses.replace(snap, approvals=overlay), now, self.context)

    def fault(self, review: AdmissionRequest, code: ReasonCode, detail: str) -> Decision:
        """A denial for the webhook's own failure, worded and shaped like any other."""
        try:
            snap = self.source.snapshot()
        except Exception:  # the source itself is broken: still answer
            log.exception("snapshot unavailable")
            snap = Snapshot(trust=None, policy=None)
        return Verdict.deny(code, detail).finish(review, snap)

    # -- probes ---------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        # Ready also with an invalid trust store or policy (SPEC §5): this replica then
        # denies gated changes with "configuration invalid" and the config guard can still
        # admit the fix; taking it out of the Service would block that fix too. Probes read
        # only the status; people read the text, tools ask for JSON (Accept) and get the
        # snapshot `generation`, which a reload (SIGHUP with --static) increments.
        generation = getattr(self.source, "generation", 0)
        ready = self.source.ready
        body: dict[str, object] = {"status": "ready" if ready else "not ready",
                                   "generation": generation}
        if not ready:
            body["reason"] = self.source.not_ready_reason()
        else:
            error = self.source.snapshot().config_error
            if error:
                body["configError"] = f"configuration invalid: {error}"
        status = 200 if ready else 503
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(body, status=status)
        detail = body.get("reason") or body.get("configError")
        text = f"{body['status']}" + (f": {detail}" if detail else "")
        return web.Response(text=f"{text} (generation {generation})\n", status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def make_app(webhook: Webhook) -> web.Application:
    """The HTTPS side (served with the ReloadingCertificate's SSLContext): `POST /validate`
    only. The router answers anything else (404, or 405 naming POST), and `Expect:
    100-continue` (curl sends it for big bodies)."""
    # client_max_size makes request.read() refuse bodies over the limit with 413, also when
    # they arrive chunked without a Content-Length.
    app = web.Application(client_max_size=webhook.config.max_body_bytes)
    app.router.add_post(VALIDATE_PATH, webhook.validate)
    return app


def make_metrics_app(webhook: Webhook) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", webhook.metrics)
    app.router.add_get("/healthz", webhook.healthz)
    app.router.add_get("/readyz", webhook.readyz)
    return app
