"""What every handler of one operator run shares: settings, the clock, the API, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from changegate.core.snapshot import ProcessConfig
from changegate.operator.api import Api
from changegate.operator.metrics import OperatorMetrics
from changegate.operator.record import Record

# How often each live approval is judged again without an event: it moves an approval
# past expiresAt (a display: the webhook checks expiry itself), and picks up a trust
# store or policy change. Ten seconds of lag on a display costs nothing; a thousand live
# approvals re-verified every ten seconds costs ~0.1 ms each.
RESYNC_SECONDS = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    process: ProcessConfig
    kubeconfig: str | None = None
    clock: Callable[[], datetime] = utcnow
    resync: float = RESYNC_SECONDS
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    client: Api | None = None  # made at startup, closed at cleanup
    record: Record | None = None  # read at startup (record.py)
    server_version: str = ""  # the API server's gitVersion, read at startup
    # Gated objects whose transition still owes a review that could not be created yet:
    # (kind, namespace, name) -> the digest it moved to (changes.py tries them again).
    retry: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # The chart's rendering of the webhook configuration's entries (drift.py); None: no
    # drift detection (the operator runs without the chart's webhooks.yaml).
    expected_webhooks: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.metrics.clock = self.clock

    @property
    def api(self) -> Api:
        if self.client is None:
            raise RuntimeError("the operator's API client is made at startup")
        return self.client
