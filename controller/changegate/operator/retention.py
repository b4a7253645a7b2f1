"""Terminal ChangeApprovals deleted after ``approvalRetention`` (SPEC §7a, default 30 d).

Applied, Expired, Rejected, Reviewed and CanaryFailed approvals can never change again;
once their status has not moved for the retention period they go. The API audit log and
the Events remain the record of them, and the ledger keeps a used nonce until its
expiresAt (+ grace) whatever happens to the object. A review owed is never deleted before
it is Reviewed. The clock runs from the status's last transition (its conditions'
lastTransitionTime), which the operator alone writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from changegate.core.errors import StatementError
from changegate.core.statement import parse_time
from changegate.operator.api import ApiError, object_path
from changegate.operator.context import Context
from changegate.operator.world import World

LOG = logging.getLogger("changegate.operator.retention")
DONE = frozenset({"Applied", "Expired", "Rejected", "Reviewed", "CanaryFailed"})
API_VERSION = "changegate.io/v1alpha1"


def due(entries: Iterable[tuple[str, dict[str, str]]], now: datetime,
        retention: timedelta) -> list[tuple[str, str, str]]:
    """(namespace, name, uid) of the terminal approvals kept long enough."""
    out = []
    for namespace, e in entries:
        if e.get("phase") not in DONE or not e.get("since"):
            continue
        try:
            since = parse_time(e["since"])
        except StatementError:
            continue
        if since + retention <= now:
            out.append((namespace, e["name"], e["uid"]))
    return sorted(out)


async def sweep(ctx: Context, world: World) -> int:
    policy, _ = world.policy
    if policy is None:  # unreadable policy: keep everything rather than guess the period
        return 0
    gone = 0
    for namespace, name, uid in due(world.all_approvals(), ctx.clock(),
                                    timedelta(seconds=policy.approvalRetention)):
        try:
            await ctx.api.delete(object_path(API_VERSION, "ChangeApproval", namespace, name),
                                 uid=uid)
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or a newer object of that name
                raise
            continue
        gone += 1
        LOG.info("deleted ChangeApproval %s/%s: terminal for longer than approvalRetention",
                 namespace, name)
    return gone
