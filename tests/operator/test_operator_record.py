"""The operator's record (SPEC §7a) against the fake API server: a break-glass change owes
a review (nonce in the ledger at once, signed afterwards, overdue on the clock), an
unexplained change is counted, told and owed a review, also when it happened while the
operator was down; changes that something explains owe nothing."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import timedelta
from typing import Any

from changegate.core.compose import statement_bytes
from changegate.core.digest import digest
from changegate.core.statement import parse_statement
from tests.operator.conftest import (
    CONFIGMAPS,
    CONTROLLER_NS,
    DEPLOYMENTS,
    NS,
    eventually,
    sign,
    update_approval,
)

GLASS = "changegate.io/break-glass"
CHECKOUT = f"/apis/apps/v1/namespaces/{NS}/deployments/checkout"


def reviews(k8s) -> list[dict[str, Any]]:
    return [o for (plural, ns, _), o in list(k8s.kube.store.items())
            if plural == "changeapprovals" and ns == NS
            and "changegate.io/review" in (o["metadata"].get("labels") or {})]


def owed(k8s) -> dict[str, Any] | None:
    found = [r for r in reviews(k8s) if (r.get("status") or {}).get("review")]
    return found[0] if len(found) == 1 else None


def metric(ctx, line: str) -> bool:
    return line.encode() in ctx.metrics.exposition()


def image(live: dict[str, Any], tag: str) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": f"registry.example/checkout:{tag}"}]}}}}


async def baseline(k8s, ctx) -> None:
    """The operator has recorded checkout as it is."""
    def recorded() -> bool:
        return any("checkout" in v for d in "0123456789abcdef" for v in (
            (k8s.kube.obj(CONFIGMAPS, CONTROLLER_NS, f"changegate-record-{d}") or {})
            .get("data") or {}).values())
    await eventually(recorded, what="checkout in the record")


async def test_a_break_glass_change_owes_a_review_that_approvers_sign(k8s, operator, clock):
    live = await k8s.setup(policy="reviewDeadline: 1h\n")
    async with operator() as ctx:
        await baseline(k8s, ctx)
        # dana rolls back under break-glass (the webhook admitted it; the operator sees it).
        changed = await k8s.patch(CHECKOUT, {
            "metadata": {"annotations": {GLASS: "INC-9 rollback: 5xx at 40% by dana"}},
            **image(live, "0.9")})
        review = await eventually(lambda: owed(k8s), what="the review owed")
        await eventually(lambda: k8s.phase(review["metadata"]["name"]) == "ReviewOwed")
        review = k8s.approval(review["metadata"]["name"])
        spec, status = review["spec"], review["status"]
        assert (spec["operation"], spec["fromDigest"], spec["toDigest"]) == (
            "UPDATE", digest(live), digest(changed))
        assert spec["target"]["uid"] == live["metadata"]["uid"]
        assert spec["requestedBy"] == "dana" and spec["changeRecord"]["id"] == "INC-9"
        assert status["review"]["reason"] == "break-glass"
        assert status["review"]["detail"] == "INC-9 rollback: 5xx at 40% by dana"
        assert review["metadata"]["labels"] == {"changegate.io/review": "break-glass"}
        # Its nonce is in the ledger: it is the record of a used change, it admits nothing.
        nonce = parse_statement(statement_bytes(review)).predicate.nonce
        entry = json.loads(k8s.ledger()[nonce])
        assert entry["approval"] == f"{NS}/{review['metadata']['name']}"
        await eventually(lambda: {"BreakGlass", "ReviewOwed"} <= set(
            k8s.event_reasons("checkout")), what="the Events")
        await eventually(lambda: metric(ctx, 'changegate_reviews_owed{state="pending"} 1.0'))
        assert metric(ctx, 'changegate_reviews_owed{state="overdue"} 0.0')
        # Break-glass is explained: nothing unexplained is counted.
        assert b"changegate_unexplained_changes_total{" not in ctx.metrics.exposition()
        clock.advance(timedelta(hours=1, seconds=1))  # past reviewDeadline
        assert metric(ctx, 'changegate_reviews_owed{state="overdue"} 1.0')

        # bob and carol review it, with the same signatures as any approval.
        await k8s.add_signatures(review["metadata"]["name"], sign(review, "bob", "carol"))
        await eventually(lambda: k8s.phase(review["metadata"]["name"]) == "Reviewed",
                         what="Reviewed")
        assert k8s.approval(review["metadata"]["name"])["status"]["approvers"] == [
            "bob", "carol"]
        await eventually(lambda: metric(ctx, 'changegate_reviews_owed{state="overdue"} 0.0'))
        await eventually(lambda: "Reviewed" in k8s.event_reasons(review["metadata"]["name"]))
    assert len(reviews(k8s)) == 1


async def test_a_change_made_while_the_operator_was_down_is_unexplained_after_restart(
        k8s, operator):
    live = await k8s.setup()
    async with operator() as ctx:
        await baseline(k8s, ctx)
    # Down, and the webhook deleted: an unapproved change lands.
    changed = await k8s.patch(CHECKOUT, image(live, "6.6.6"))
    async with operator() as ctx:
        review = await eventually(lambda: owed(k8s), what="the review owed after restart")
        await eventually(lambda: metric(
            ctx, f'changegate_unexplained_changes_total{{kind="Deployment",namespace="{NS}"}} 1.0'))
        await eventually(lambda: "UnexplainedChange" in k8s.event_reasons("checkout"))
        review = await eventually(lambda: k8s.phase(review["metadata"]["name"]) == "ReviewOwed"
                                  and k8s.approval(review["metadata"]["name"]))
        assert review["status"]["review"]["reason"] == "unexplained"
        assert digest(live) in review["status"]["review"]["detail"]
        assert (review["spec"]["fromDigest"], review["spec"]["toDigest"]) == (
            digest(live), digest(changed))
        assert review["spec"]["requestedBy"] == "unknown"
    # Told once: a third run finds it recorded and says nothing more.
    events = len(k8s.kube.events(NS, "checkout"))
    async with operator() as ctx:
        await eventually(lambda: metric(ctx, 'changegate_reviews_owed{state="pending"} 1.0'))
        assert not metric(ctx, 'changegate_unexplained_changes_total{kind="Deployment",'
                               f'namespace="{NS}"}} 1.0')
    assert len(k8s.kube.events(NS, "checkout")) == events and len(reviews(k8s)) == 1


async def test_changes_that_something_explains_owe_nothing(k8s, operator):
    live = await k8s.setup(policy="restartWriters: {users: [argo]}\n")
    approval, manifest = update_approval(live)
    async with operator() as ctx:
        await baseline(k8s, ctx)
        # An approved change.
        await k8s.create_approval(sign(approval, "bob", "carol"))
        await eventually(lambda: k8s.phase("chg-1234") == "Approved")
        await k8s.apply_deployment(manifest)
        await eventually(lambda: k8s.phase("chg-1234") == "Applied")
        # A scale-up (the scale guard lets every one through without the webhook).
        await k8s.patch(CHECKOUT, {"spec": {"replicas": 5}})
        # A restart by a restart writer.
        await k8s.patch(CHECKOUT, {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "2026-11-23T10:00:00Z"}}}}})
        # The root-CA publisher's ConfigMap (built-in exempt writer).
        await k8s.configmap(NS, "kube-root-ca.crt", {"ca.crt": "x"})
        # The break-glass value alone (no change under it), then a change: unexplained,
        # since an annotation left in place grants nothing.
        await k8s.patch(CHECKOUT, {"metadata": {"annotations": {GLASS: "INC-1 by dana"}}})
        await k8s.patch(CHECKOUT, {"metadata": {"labels": {"tampered": "yes"}}})
        review = await eventually(lambda: owed(k8s), what="one review, for the last change")
        assert review["status"]["review"]["reason"] == "unexplained"
    assert len(reviews(k8s)) == 1


async def test_a_view_change_without_a_write_is_a_rebaseline(k8s, operator):
    """A policy (or a Kubernetes upgrade) that changes the view changes digests without any
    write: recorded as the new baseline, never unexplained."""
    await k8s.setup()
    async with operator() as ctx:
        await baseline(k8s, ctx)
    policy = k8s.kube.obj(CONFIGMAPS, CONTROLLER_NS, "changegate-policy")
    await k8s.patch(f"/api/v1/namespaces/{CONTROLLER_NS}/configmaps/changegate-policy",
                    {"data": {"policy.yaml": "ignoredLabels: [app]\n"}})
    assert policy is not None
    async with operator() as ctx:
        await eventually(lambda: ctx.record is not None and ctx.record.loaded)
        entry = await eventually(lambda: (seen := ctx.record.get("Deployment", NS, "checkout"))
                                 and "app" not in json.dumps(seen.digest) and seen)
        current = k8s.kube.obj(DEPLOYMENTS, NS, "checkout")
        from changegate.core.policy import load_policy
        rules = load_policy("ignoredLabels: [app]\n").view_rules
        await eventually(lambda: ctx.record.get("Deployment", NS, "checkout").digest
                         == digest(current, rules), what="the new baseline")
        assert entry is not None
    assert reviews(k8s) == []
    assert "UnexplainedChange" not in k8s.event_reasons("checkout")


async def test_a_warn_namespace_gets_would_deny_events_not_reviews(k8s, operator):
    live = await k8s.setup(namespace_annotations={"changegate.io/enforcement": "warn"})
    async with operator() as ctx:
        await baseline(k8s, ctx)
        await k8s.patch(CHECKOUT, image(live, "7.0"))
        await eventually(lambda: "WouldDeny" in k8s.event_reasons("checkout"))
    event = next(e for e in k8s.kube.events(NS, "checkout") if e["reason"] == "WouldDeny")
    assert digest(live) in event["message"]
    assert reviews(k8s) == []


async def test_terminal_approvals_are_deleted_after_approval_retention(k8s, operator, clock):
    live = await k8s.setup(policy="approvalRetention: 2h\n")
    applied, manifest = update_approval(live)
    unused, _ = update_approval(live, name="chg-1235", record="CHG-1235",
                                image="registry.example/checkout:3.0")
    async with operator():
        await k8s.create_approval(sign(applied, "bob", "carol"))
        await k8s.create_approval(unused)
        await eventually(lambda: k8s.phase("chg-1234") == "Approved")
        await k8s.apply_deployment(manifest)
        await eventually(lambda: k8s.phase("chg-1234") == "Applied")
        await eventually(lambda: k8s.phase("chg-1235") == "Rejected" or
                         k8s.phase("chg-1235") == "Pending")
        clock.advance(timedelta(hours=1))
        await asyncio.sleep(1)  # a few resyncs: nothing is old enough yet
        assert k8s.approval("chg-1234")
        clock.advance(timedelta(hours=1, minutes=1))
        await eventually(lambda: not k8s.approval("chg-1234"), what="Applied one deleted")
        # Still Pending (not terminal) at the clock's time: kept, until it expires (4 h
        # lifetime) and then stays Expired for the retention period.
        assert k8s.approval("chg-1235")
        clock.advance(timedelta(hours=2))
        await eventually(lambda: k8s.phase("chg-1235") == "Expired", what="Expired")
        assert k8s.approval("chg-1235")
        clock.advance(timedelta(hours=2, minutes=1))
        await eventually(lambda: not k8s.approval("chg-1235"), what="Expired one deleted")


async def test_a_review_that_could_not_be_created_is_tried_again_and_told(k8s, operator):
    """The ledger refuses for a while (here: conflicts beyond the writer's retries): the
    transition stays unrecorded, the record loop tries again each resync, and the review
    and its Event come once the ledger takes the write."""
    from changegate.operator.reviews import review_nonce
    live = await k8s.setup()
    async with operator() as ctx:
        await baseline(k8s, ctx)
        changed = image(live, "6.6.6")
        after = copy.deepcopy(live)
        after["spec"]["template"]["spec"]["containers"][0]["image"] = \
            changed["spec"]["template"]["spec"]["containers"][0]["image"]
        nonce = review_nonce(NS, "Deployment", "checkout", digest(live), digest(after))
        k8s.kube.conflicts[f"changegate-ledger-{nonce[0]}"] = 12
        await k8s.patch(CHECKOUT, changed)
        review = await eventually(lambda: owed(k8s), what="the review, on a later try")
        assert review["spec"]["toDigest"] == digest(after)
        await eventually(lambda: "ReviewOwed" in k8s.event_reasons("checkout"),
                         what="its Event, posted from the record loop")
        assert k8s.event_reasons("checkout").count("UnexplainedChange") == 1
        [told] = [e for e in k8s.kube.events(NS, "checkout") if e["reason"] == "ReviewOwed"]
        assert told["metadata"]["name"].startswith("changegate-operator-")  # not kopf's
        assert told["involvedObject"]["uid"] == live["metadata"]["uid"]
        assert ctx.retry == {}


def test_a_write_in_the_same_second_as_the_record_is_still_named():
    """managedFields times have whole seconds: a write in the second the operator last
    recorded the object must not read as "written by nobody"."""
    from changegate.operator.explain import writers_since

    obj = {"metadata": {"managedFields": [
        {"manager": "kubectl-client-side-apply", "operation": "Update",
         "time": "2026-12-02T10:00:00Z"},
        {"manager": "autoscaler-script", "operation": "Update", "time": "2026-12-02T10:00:05Z"},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "time": "2026-12-02T10:00:05Z"}]}}
    assert writers_since(obj, "2026-12-02T10:00:05Z") == ["autoscaler-script (Update)"]
    assert writers_since(obj, "2026-12-02T10:00:06Z") == []
