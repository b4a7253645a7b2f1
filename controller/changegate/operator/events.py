"""Events on objects, from a kopf handler or from the operator's own background loop.

kopf.info/kopf.warn queue an Event through the handler's context; outside a handler (the
record loop that retries a review owed) that context does not exist, and the Event is
then created directly (core/v1, the same fields kopf writes)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from changegate.core.statement import format_time
from changegate.operator.api import ApiError
from changegate.operator.context import Context

LOG = logging.getLogger("changegate.operator.events")
COMPONENT = "changegate-operator"
MAX_MESSAGE = 1024


async def post(ctx: Context, body: Mapping[str, Any], kind: str, reason: str,
               message: str) -> None:
    """``kind``: Normal or Warning."""
    message = message[:MAX_MESSAGE]
    try:
        (kopf.warn if kind == "Warning" else kopf.info)(
            cast(kopf.Body, body), reason=reason, message=message)
        return
    except LookupError:  # not in a kopf handler: no event queue in this context
        pass
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    now = format_time(ctx.clock())
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"generateName": "changegate-operator-", "namespace": namespace},
             "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                                "name": meta.get("name"), "namespace": meta.get("namespace"),
                                "uid": meta.get("uid")},
             "reason": reason, "message": message, "type": kind,
             "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
             "firstTimestamp": now, "lastTimestamp": now, "count": 1}
    try:
        await ctx.api.create(f"/api/v1/namespaces/{namespace}/events", event)
    except ApiError as exc:  # an Event is worth a log line, never a failed transition
        LOG.warning("cannot post Event %s on %s/%s: %s", reason, namespace, meta.get("name"),
                    exc)
