"""Worst-case signature verification per decision (issue 18, item 3): junk approvals x keys.

Run: python bench/verify_worst_case.py [--approvals 1,16,250] [--keys 2,50,200]

Each stored ChangeApproval names exactly the change being judged (so the cap per target
does not skip it), has the same change record and requester as the good one (so the atomic
record check looks at it too), and carries 16 signatures whose keyid names a trusted key
but which another key made: the most a signature can cost. The door refuses such objects
today; this is what a store filled before that (or through keys since removed) costs.

Prints, per row: verifications made, milliseconds for one cold decision (no memo) and
the outcome, the same decision in another namespace (unaffected), and what the old search
(every signature against every key, no caps, no budget) would have made.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from changegate.core import dsse
from changegate.core.approval import MAX_SIGNATURES
from changegate.core.budget import MAX_VERIFICATIONS
from changegate.core.compose import signed
from changegate.core.decision import Context, decide
from changegate.core.dsse import generate
from tests.support import NOW, approval_for, fixture, key, request_of, sign, snapshot, trust_yaml

COUNT = [0]
_real_verify = dsse.PublicKey.verify


def _counting(self: dsse.PublicKey, signature: bytes, message: bytes) -> bool:
    COUNT[0] += 1
    return _real_verify(self, signature, message)


def junk_approval(review: dict, name: str, keyids: list[str]) -> dict:
    approval = approval_for(review, name=name)
    stranger = generate()
    entry = signed(approval, stranger)["spec"]["signatures"][0]
    approval["spec"]["signatures"] = [
        {**entry, "keyid": keyids[i % len(keyids)]} for i in range(MAX_SIGNATURES)]
    return approval


def trust_with(n: int) -> str:
    entries = [{"name": f"approver-{i}", "namespaces": ["payments"],
                "keys": [key(f"approver-{i}").public.pem()]} for i in range(n)]
    entries += [{"name": "bob", "namespaces": ["*"], "keys": [key("bob").public.pem()]},
                {"name": "carol", "namespaces": ["*"], "keys": [key("carol").public.pem()]}]
    return trust_yaml(entries)


def one_verify_us() -> float:
    k = generate()
    message = dsse.pae(dsse.PAYLOAD_TYPE, b"x" * 2000)
    bad = generate().sign(message)
    start, n = time.perf_counter(), 500
    for _ in range(n):
        _real_verify(k.public, bad, message)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--approvals", default="1,16,250")
    parser.add_argument("--keys", default="2,50,200")
    args = parser.parse_args()
    dsse.PublicKey.verify = _counting  # type: ignore[method-assign]
    review = fixture("deployment-update")
    elsewhere = copy.deepcopy(review)
    elsewhere["request"]["namespace"] = "shipping"
    for obj in ("object", "oldObject"):
        elsewhere["request"][obj]["metadata"]["namespace"] = "shipping"
    per_verify = one_verify_us()
    print(f"one failed Ed25519 verification: {per_verify:.0f} us; budget "
          f"{MAX_VERIFICATIONS} verifications per decision")
    print(f"{'approvals':>9} {'keys':>5} {'verifs':>7} {'cold ms':>8} {'outcome':<22} "
          f"{'other ns ms':>11} {'old verifs':>10} {'old est. s':>10}")
    for n_approvals in (int(x) for x in args.approvals.split(",")):
        for n_keys in (int(x) for x in args.keys.split(",")):
            trust = trust_with(n_keys)
            keyids = [key(f"approver-{i}").public.keyid for i in range(n_keys)]
            good = sign(approval_for(review, name="good"), "bob", "carol")
            junk = [junk_approval(review, f"junk-{i}", keyids) for i in range(n_approvals)]
            snap = snapshot(*junk, good, trust=trust)
            COUNT[0] = 0
            start = time.perf_counter()
            decision = decide(request_of(review), snap, NOW, Context())
            cold_ms = (time.perf_counter() - start) * 1e3
            verifs = COUNT[0]
            start = time.perf_counter()
            decide(request_of(elsewhere), snap, NOW, Context())
            other_ms = (time.perf_counter() - start) * 1e3
            # Before: each of the 16 signatures tried against every key (the named one,
            # then all others) for every approval on the target (siblings hit the memo).
            old = n_approvals * MAX_SIGNATURES * (n_keys + 2) + 2
            print(f"{n_approvals:>9} {n_keys:>5} {verifs:>7} {cold_ms:>8.1f} "
                  f"{decision.outcome + ':' + decision.code:<22} {other_ms:>11.2f} "
                  f"{old:>10} {old * per_verify / 1e6:>10.1f}")


if __name__ == "__main__":
    main()
