"""The operator's own instruments (SPEC §8), in their own registry: the operator and the
webhook are separate processes, each with its own /metrics.

``changegate_changeapprovals{phase}`` counts what the operator last saw of each
ChangeApproval; after a restart kopf lists them all again, so it is never a memory of
the operator's own. Every known phase is exported, zeros included, so an alert on
``changegate_changeapprovals{phase="Pending"}`` never sees a missing series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as CounterMetric

from changegate.core.canary import RESULTS as canary_results

PHASES = ("Pending", "Approved", "Applied", "Expired", "Rejected", "CanaryRunning",
          "CanaryFailed", "Promoted", "ReviewOwed", "Reviewed")
# Every result a canary run can end with (core.canary): exported from the start, so the
# canary alert's increase() sees the first failure.
CANARY_RESULTS = tuple(sorted({"promoted", *canary_results.values()}))
# From creation to Approved: minutes when approvers are at hand, hours across time zones,
# a day at the default maxApprovalLifetime.
WAIT_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


class OperatorMetrics:
    """One set of instruments per operator run (tests run several in one process)."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.approvals = Gauge(
            "changegate_changeapprovals", "ChangeApprovals by status.phase, as last seen.",
            ["phase"], registry=self.registry)
        self.wait = Histogram(
            "changegate_approval_wait_seconds",
            "Time from a ChangeApproval's creation to its Approved phase.",
            buckets=WAIT_BUCKETS, registry=self.registry)
        self.unexplained = CounterMetric(
            "changegate_unexplained_changes",
            "Digest transitions of gated tier-1 objects that no approval, break-glass, "
            "exempt or restart writer, scale or re-baseline explains (SPEC §7a).",
            ["namespace", "kind"], registry=self.registry)
        self.reviews = Gauge(
            "changegate_reviews_owed",
            "Reviews owed (break-glass or unexplained changes) not yet signed, by state: "
            "pending, or overdue once older than the policy's reviewDeadline.",
            ["state"], registry=self.registry)
        self.drift = Gauge(
            "changegate_webhook_config_drift",
            "1 while the ValidatingWebhookConfiguration differs from what the chart "
            "rendered (rules, failurePolicy, selectors, matchConditions, caBundle).",
            registry=self.registry)
        # SPEC §8: the canary flow (operator/canary.py) counts each run's result here.
        self.canary_runs = CounterMetric(
            "changegate_canary_runs", "Canary runs (SPEC §7) by result.", ["result"],
            registry=self.registry)
        for result in CANARY_RESULTS:
            self.canary_runs.labels(result)
        self._phases: dict[str, str] = {}  # uid -> phase
        self._owed: dict[str, datetime] = {}  # uid -> deadline of an unsigned review
        self.drift_lines: list[str] = []  # what differs, as last judged (drift.py)
        self._publish()
        self._publish_reviews()
        self.drift.set(0)

    def saw(self, uid: str, phase: str) -> None:
        """An approval with this phase ("" before the operator's first status: Pending)."""
        self._phases[uid] = phase or "Pending"
        self._publish()

    def gone(self, uid: str) -> None:
        self._phases.pop(uid, None)
        self._owed.pop(uid, None)
        self._publish()

    def owed(self, uid: str, deadline: datetime | None) -> None:
        """A review still owed until signed (``deadline``: when it becomes overdue), or
        signed (None)."""
        if deadline is None:
            self._owed.pop(uid, None)
        else:
            self._owed[uid] = deadline

    def _publish_reviews(self) -> None:
        # Overdue is a matter of the clock, so it is counted when scraped, not when seen.
        now = self.clock()
        overdue = sum(1 for deadline in self._owed.values() if now >= deadline)
        self.reviews.labels("pending").set(len(self._owed) - overdue)
        self.reviews.labels("overdue").set(overdue)

    def _publish(self) -> None:
        counts = Counter(self._phases.values())
        for phase in {*PHASES, *counts}:
            self.approvals.labels(phase).set(counts.get(phase, 0))

    def exposition(self) -> bytes:
        self._publish_reviews()
        return generate_latest(self.registry)
