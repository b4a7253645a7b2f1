"""Decisions per second of the pure core on deployment-update.json with two valid signatures.

Run: python bench/decide_bench.py [--seconds 5]. One process, one core; verification
results are memoized per ChangeApproval version, as the webhook does. Also prints the cold
cost (no memo, no digest cache) and the digest alone, so a regression shows where it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changegate.core.decision import Context, decide
from changegate.core.digest import digest
from tests.support import NOW, approval_for, fixture, request_of, sign, snapshot


def rate(fn, seconds: float) -> tuple[float, float]:
    """(calls per second, microseconds per call) over about ``seconds``."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        n += 100
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    review = fixture("deployment-update")
    approvals = [sign(approval_for(review), "bob", "carol")]
    # Realistic neighbours: 200 other approvals in the namespace, for other objects.
    for i in range(200):
        other = fixture("configmap-update")
        other["request"]["name"] = f"cm-{i}"
        other["request"]["object"]["metadata"]["name"] = f"cm-{i}"
        approvals.append(approval_for(other, name=f"other-{i}", record=f"CHG-{i + 2}"))
    snap = snapshot(*approvals)
    request = request_of(review)
    ctx = Context()
    first = decide(request, snap, NOW, ctx)
    assert first.allowed, first.message
    warm, warm_us = rate(lambda: decide(request, snap, NOW, ctx), args.seconds)
    cold, cold_us = rate(lambda: decide(request, snap, NOW, Context()), args.seconds)
    obj = review["request"]["object"]
    dig, dig_us = rate(lambda: digest(obj), args.seconds)
    print(f"decide (memoized, as served): {warm:8.0f} decisions/s  {warm_us:7.1f} us each")
    print(f"decide (cold: verify + both digests): {cold:8.0f} decisions/s  {cold_us:7.1f} us each")
    print(f"digest of the fixture Deployment: {dig:8.0f}/s  {dig_us:7.1f} us each")
    target = 5000
    print(f"target >= {target}/s on one core: {'met' if warm >= target else 'MISSED'}")


if __name__ == "__main__":
    main()
