"""How much signature verification one decision may do (SPEC §5: bounded work).

Counted in verifications, not seconds, so the core stays clock-free and `changegate
check` reproduces a webhook answer exactly; the webhook picks a count that fits well
inside its deadline (bench/verify_worst_case.py measures one verification).
"""

from __future__ import annotations

from dataclasses import dataclass

from changegate.core.errors import ChangeGateError

# ~0.1-0.15 ms per Ed25519 or P-256 verification on one core (bench/verify_worst_case.py):
# 512 is under 0.1 s, far inside the 4 s default deadline, and short enough that a request
# running on the event loop never holds up other namespaces' requests noticeably. An
# honest decision verifies a handful (one approval, two or three signatures; a release of
# a few dozen objects once, then from the memo).
MAX_VERIFICATIONS = 512


class BudgetExhausted(ChangeGateError):
    """The decision would need more verifications than its budget allows."""


@dataclass(slots=True)
class Budget:
    """Verifications left for one decision; a new one per request."""

    left: int = MAX_VERIFICATIONS

    def take(self) -> None:
        if self.left <= 0:
            raise BudgetExhausted("signature verification budget exhausted")
        self.left -= 1
