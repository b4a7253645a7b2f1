"""Restarts: all state is in the API (status, ledger), so a new operator process derives
the same result, records a use only once and tells no story twice."""

from __future__ import annotations

import json

from changegate.core.compose import statement_bytes
from changegate.core.statement import parse_statement
from changegate.operator.ledger import LedgerEntry
from tests.operator import conftest as op

NAME = "chg-1234"


def nonce_of(approval):
    return parse_statement(statement_bytes(approval)).predicate.nonce


async def test_what_happens_while_the_operator_is_down_is_recorded_when_it_is_back(
        k8s, operator):
    live = await k8s.setup()
    approval, manifest = op.update_approval(live)
    async with operator():
        await k8s.create_approval(approval)
        await op.eventually(lambda: k8s.phase(NAME) == "Pending")
    # Down: the approvers sign, and the change is applied (the webhook admits it).
    await k8s.add_signatures(NAME, op.sign(approval, "bob", "carol"))
    await k8s.apply_deployment(manifest)
    assert k8s.phase(NAME) == "Pending" and not k8s.ledger()
    async with operator():
        await op.eventually(lambda: k8s.phase(NAME) == "Applied", what="Applied after restart")
        await op.eventually(lambda: k8s.kube.obj(op.DEPLOYMENTS, op.NS, "checkout")["metadata"]
                         .get("annotations"), what="target annotation")
    assert list(k8s.ledger()) == [nonce_of(approval)]
    assert k8s.approval(NAME)["status"]["approvers"] == ["bob", "carol"]


async def test_a_restart_after_everything_happened_writes_nothing_and_tells_nothing_twice(
        k8s, operator):
    live = await k8s.setup()
    approval, manifest = op.update_approval(live)
    async with operator():
        await k8s.create_approval(op.sign(approval, "bob", "carol"))
        await op.eventually(lambda: k8s.phase(NAME) == "Approved")
        await k8s.apply_deployment(manifest)
        await op.eventually(lambda: k8s.phase(NAME) == "Applied")
    before = (k8s.approval(NAME), k8s.ledger(), len(k8s.kube.events(op.NS, NAME)),
              k8s.kube.obj(op.DEPLOYMENTS, op.NS, "checkout"))
    async with operator() as ctx:  # it has judged the approval again: it counts it
        await op.eventually(lambda: b'changegate_changeapprovals{phase="Applied"} 1.0'
                         in ctx.metrics.exposition(), what="the approval seen again")
    after = (k8s.approval(NAME), k8s.ledger(), len(k8s.kube.events(op.NS, NAME)),
             k8s.kube.obj(op.DEPLOYMENTS, op.NS, "checkout"))
    assert after == before  # same status (lastTransitionTime too), ledger, Events, target


async def test_a_crash_between_the_ledger_write_and_the_status_write_is_completed(
        k8s, operator):
    """The ledger is written first: a crash right after it leaves the use recorded (the
    webhook refuses the nonce already) and the next operator finishes the status."""
    live = await k8s.setup()
    approval, manifest = op.update_approval(live)
    created = await k8s.create_approval(op.sign(approval, "bob", "carol"))
    await k8s.apply_deployment(manifest)
    nonce = nonce_of(approval)
    entry = LedgerEntry(approval=f"{op.NS}/{NAME}", uid=created["metadata"]["uid"],
                        target="k8s://apps/v1/namespaces/payments/deployments/checkout",
                        expiresAt=approval["spec"]["expiresAt"])
    await k8s.configmap(op.CONTROLLER_NS, f"changegate-ledger-{nonce[0]}", {nonce: entry.to_json()})
    async with operator():
        await op.eventually(lambda: k8s.phase(NAME) == "Applied")
        await op.eventually(lambda: k8s.kube.obj(op.DEPLOYMENTS, op.NS, "checkout")["metadata"]
                         .get("annotations"))
    assert json.loads(k8s.ledger()[nonce]) == json.loads(entry.to_json())
