"""The operator's own instruments (SPEC §8), in their own registry: the operator and the
webhook are separate processes, each with its own /metrics.

``changegate_changeapprovals{phase}`` counts what the operator last saw of each
ChangeApproval; after a restart kopf lists them all again, so it is never a memory of
the operator's own. Every known phase is exported, zeros included, so an alert on
``changegate_changeapprovals{phase="Pending"}`` never sees a missing series.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

PHASES = ("Pending", "Approved", "Applied", "Expired", "Rejected", "CanaryRunning",
          "CanaryFailed", "Promoted", "ReviewOwed", "Reviewed")
# From creation to Approved: minutes when approvers are at hand, hours across time zones,
# a day at the default maxApprovalLifetime.
WAIT_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


class OperatorMetrics:
    """One set of instruments per operator run (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.approvals = Gauge(
            "changegate_changeapprovals", "ChangeApprovals by status.phase, as last seen.",
            ["phase"], registry=self.registry)
        self.wait = Histogram(
            "changegate_approval_wait_seconds",
            "Time from a ChangeApproval's creation to its Approved phase.",
            buckets=WAIT_BUCKETS, registry=self.registry)
        self._phases: dict[str, str] = {}  # uid -> phase
        self._publish()

    def saw(self, uid: str, phase: str) -> None:
        """An approval with this phase ("" before the operator's first status: Pending)."""
        self._phases[uid] = phase or "Pending"
        self._publish()

    def gone(self, uid: str) -> None:
        self._phases.pop(uid, None)
        self._publish()

    def _publish(self) -> None:
        counts = Counter(self._phases.values())
        for phase in {*PHASES, *counts}:
            self.approvals.labels(phase).set(counts.get(phase, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
