"""KubeCache against the fake API server (tests/fakeapi.py: real resourceVersion semantics),
over HTTPS with a kubeconfig, as `changegate serve` connects."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from changegate.config import ServeConfig
from changegate.core.approval import manifest_digest
from changegate.core.policy import load_policy
from changegate.webhook import readthrough
from changegate.webhook import watch as feeds
from changegate.webhook.app import Webhook, make_app
from changegate.webhook.cache import KubeCache
from changegate.webhook.compact import compact_approval
from tests.fakeapi import FakeKube, configmap, namespace
from tests.support import approval_for, fixture, key, sign, trust_yaml

NS = "changegate"
TRUST, POLICY = "changegate-trust", "changegate-policy"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(feeds, "BACKOFF_BASE", 0.02)
    monkeypatch.setattr(feeds, "BACKOFF_CAP", 0.2)


def fresh(review: dict[str, Any], *signers: str, name: str = "chg-1234") -> dict[str, Any]:
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return sign(approval_for(review, issued=issued, name=name), *signers)


def seed(fake: FakeKube, trust: str | None = None) -> None:
    fake.put(namespace("payments", {"tier": "tier-1"}))
    fake.put(namespace("shipping", {"tier": "tier-1"}))
    fake.put(namespace("sandbox"))
    fake.put(configmap(TRUST, NS, {"approvers.yaml": trust or trust_yaml()}))
    fake.put(configmap(POLICY, NS, {"policy.yaml": "requiredApprovals: 2\n"}))


async def eventually(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def ask(cache: KubeCache, review: dict[str, Any]) -> dict[str, Any]:
    async with TestClient(TestServer(make_app(Webhook(cache, ServeConfig())))) as http:
        response = await http.post("/validate", json=review)
        return (await response.json())["response"]


async def test_ready_only_once_every_watch_listed_then_the_snapshot_holds_the_cluster(
        fake, make_cache):
    seed(fake)
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", "carol"))
    fake.put(configmap("changegate-ledger-a", NS, {"a1b2": "{}", "a3c4": "{}"}))
    fake.put(configmap("unrelated", NS, {"x": "y"}))
    fake.put({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
              "metadata": {"name": "web", "namespace": "payments"},
              "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}}})
    cache = await make_cache(fake)
    assert not cache.ready
    fake.start()
    await eventually(lambda: cache.ready)
    snap = cache.snapshot()
    assert snap.ready and snap.config_error == ""
    assert set(snap.namespaces) == {"payments", "shipping", "sandbox"}
    assert [a.name for a in snap.approvals_in("payments")] == ["chg-1234"]
    assert snap.ledger == {"a1b2", "a3c4"}
    assert snap.hpa_targets == {("payments", "web")}
    assert len(snap.trust) == 7 and snap.policy.requiredApprovals == 2
    assert (await ask(cache, review))["allowed"] is True


async def test_an_event_rebuilds_only_its_namespace_and_old_snapshots_stay_as_they_were(
        fake, make_cache):
    seed(fake)
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", name="a"))
    other = fresh(review, "bob", name="b")
    other["metadata"]["namespace"] = "shipping"
    fake.put(other)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    before = cache.snapshot()
    fake.put(fresh(review, "bob", "carol", name="c"))
    await eventually(lambda: len(cache.snapshot().approvals_in("payments")) == 2)
    after = cache.snapshot()
    assert len(before.approvals_in("payments")) == 1  # immutable: a request keeps its view
    assert after.approvals["shipping"] is before.approvals["shipping"]  # shared, not rebuilt
    assert after.namespaces is before.namespaces and after.trust is before.trust
    fake.delete("changeapprovals", "c", "payments")
    await eventually(lambda: len(cache.snapshot().approvals_in("payments")) == 1)


async def test_a_dropped_watch_resumes_from_the_last_version_seen_without_relisting(
        fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    review = fixture("deployment-update")
    seen = fake.put(fresh(review, "bob", name="first"))["metadata"]["resourceVersion"]
    await eventually(lambda: len(cache.snapshot().approvals_in("payments")) == 1)
    watches = len(fake.watch_requests("changeapprovals"))
    await fake.drop_watches()
    fake.put(fresh(review, "bob", name="during-the-gap"))
    await eventually(lambda: len(fake.watch_requests("changeapprovals")) > watches)
    assert fake.watch_requests("changeapprovals")[-1]["resourceVersion"] == seen
    await eventually(lambda: len(cache.snapshot().approvals_in("payments")) == 2)
    assert len(fake.list_requests("changeapprovals")) == 1
    assert cache.ready


async def test_a_bookmark_moves_the_resume_point(fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: len(fake.watchers) == 4)  # every feed is watching
    fake.bookmark()
    bookmarked = str(fake.version)
    runner = next(r for r in cache.runners if r.feed.name == "changeapprovals")
    await eventually(lambda: runner.resource_version == bookmarked)
    assert runner.bookmarks == 1
    await fake.drop_watches()
    await eventually(lambda: fake.watch_requests("changeapprovals")[-1].get("resourceVersion")
                     == bookmarked)


async def test_410_gone_relists_and_the_relist_catches_up_with_what_was_missed(
        fake, make_cache):
    seed(fake)
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", name="stays"))
    fake.put(fresh(review, "bob", name="goes"))
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    fake.stop()  # the API goes away; while it is gone...
    fake.delete("changeapprovals", "goes", "payments")
    fake.put(fresh(review, "bob", name="new"))
    fake.compact()  # ...history is compacted past the version the cache holds
    fake.start()
    await eventually(lambda: len(fake.list_requests("changeapprovals")) == 2)
    await eventually(lambda: {a.name for a in cache.snapshot().approvals_in("payments")}
                     == {"stays", "new"})
    runner = next(r for r in cache.runners if r.feed.name == "changeapprovals")
    assert runner.gone >= 1 and cache.ready


async def test_api_down_at_start_is_not_ready_and_denies_with_cache_not_ready(
        fake, make_cache):
    seed(fake)
    cache = await make_cache(fake)  # nothing listens on fake.port yet
    await asyncio.sleep(0.3)
    assert not cache.ready
    assert "waiting for the first list" in cache.not_ready_reason()
    assert "last error" in cache.not_ready_reason()
    denied = await ask(cache, fixture("deployment-update-metadata-only"))
    assert denied["allowed"] is False
    assert "reason: cache_not_ready" in denied["status"]["message"]
    fake.start()
    await eventually(lambda: cache.ready)
    assert (await ask(cache, fixture("deployment-update-metadata-only")))["allowed"] is True


async def test_a_trust_store_change_at_run_time_takes_effect_at_once(fake, make_cache):
    without_carol = trust_yaml([
        {"name": "bob", "namespaces": ["payments"], "keys": [key("bob").public.pem()]}])
    seed(fake, trust=without_carol)
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", "carol"))
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    first = await ask(cache, review)
    assert first["allowed"] is False and "approvals=1/2" in first["status"]["message"]
    version = cache.snapshot().trust.version
    fake.put(configmap(TRUST, NS, {"approvers.yaml": trust_yaml()}))
    await eventually(lambda: cache.snapshot().trust.version != version)
    assert (await ask(cache, review))["allowed"] is True
    fake.put(configmap(TRUST, NS, {"approvers.yaml": "approvers: [{broken"}))
    await eventually(lambda: cache.snapshot().trust is None)
    broken = await ask(cache, review)
    assert broken["allowed"] is False and "configuration invalid" in broken["status"]["message"]
    assert cache.ready  # stays ready: the config guard must still admit the fix
    fake.delete("configmaps", TRUST, NS)
    await eventually(lambda: "not found" in cache.snapshot().config_error)


async def test_a_just_created_approval_is_found_by_the_read_through(fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: len(fake.watchers) == 4)
    fake.hold_events("changeapprovals")  # the watch lags behind the create
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", "carol"))
    response = await ask(cache, review)
    assert response["allowed"] is True, response
    assert cache.snapshot().approvals_in("payments") == ()  # only that decision saw it
    lists = [path for _, _, path in fake.requests
             if path.split("?")[0].endswith("/namespaces/payments/changeapprovals")]
    assert len(lists) == 1
    fake.release_events("changeapprovals")
    await eventually(lambda: len(cache.snapshot().approvals_in("payments")) == 1)


async def test_a_read_through_never_reuses_a_list_older_than_the_request(fake, make_cache,
                                                                          monkeypatch):
    monkeypatch.setattr(readthrough, "MIN_INTERVAL", 0)  # freshness alone, no rate limit
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: len(fake.watchers) == 4)
    fake.hold_events("changeapprovals")
    review = fixture("deployment-update")
    dry = copy.deepcopy(review)
    dry["request"]["dryRun"] = True
    assert (await ask(cache, dry))["auditAnnotations"]["decision"] == \
        "warned:no_approval"  # that read-through listed nothing
    fake.put(fresh(review, "bob", "carol"))  # created, watch event still held back
    assert (await ask(cache, review))["allowed"] is True
    fake.release_events("changeapprovals")


async def test_a_storm_of_denials_cannot_flood_the_api_with_read_throughs(fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    fake.list_delay = 0.05  # a slowish API server: read-throughs queue up
    review = fixture("deployment-update")
    hook = Webhook(cache, ServeConfig())
    async with TestClient(TestServer(make_app(hook))) as http:
        answers = await asyncio.gather(*(http.post("/validate", json=review)
                                         for _ in range(40)))
        assert all(a.status == 200 for a in answers)
        bodies = [await a.json() for a in answers]
        assert not any(b["response"]["allowed"] for b in bodies)
    lists = [path for _, _, path in fake.requests
             if path.split("?")[0].endswith("/namespaces/payments/changeapprovals")]
    # Coalesced: one list running and one queued per namespace, never one per request.
    assert 1 <= len(lists) <= 10, len(lists)


async def test_paged_lists_are_followed_to_the_end(fake, make_cache):
    seed(fake)
    review = fixture("deployment-update")
    for index in range(7):
        fake.put(fresh(review, "bob", name=f"a{index}"))
    fake.page_size = 3
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready)
    assert len(cache.snapshot().approvals_in("payments")) == 7
    assert len(fake.list_requests("changeapprovals")) == 3


@pytest.mark.parametrize("name", ["deployment-update", "deployment-create", "configmap-update",
                                  "configmap-create"])
@pytest.mark.parametrize("policy", ["", "ignoredAnnotations: [team]\nignoredLabels: [app]"])
def test_a_compacted_approval_keeps_its_manifest_digest(name, policy):
    review = fixture(name)
    approval = approval_for(review)
    manifest = approval["spec"]["manifest"]
    manifest["metadata"].setdefault("annotations", {}).update(
        {"team": "payments", "changegate.io/x": "y",
         "kubectl.kubernetes.io/last-applied-configuration": "{...}"})
    rules = load_policy(policy).view_rules
    compact = compact_approval(copy.deepcopy(approval))
    for autoscaled in (False, True):
        assert manifest_digest(compact.spec, rules, autoscaled) == manifest_digest(
            approval["spec"], rules, autoscaled)
    kept = compact.spec["manifest"]["metadata"]
    assert "managedFields" not in kept and "uid" not in kept
    assert "kubectl.kubernetes.io/last-applied-configuration" not in kept["annotations"]
    assert kept["annotations"]["team"] == "payments"  # the policy decides about this one


async def test_serve_with_a_kubeconfig_syncs_from_the_api_and_decides(fake, tmp_path,
                                                                      start_server, client):
    seed(fake)
    review = fixture("deployment-update")
    fake.put(fresh(review, "bob", "carol"))
    fake.start()
    server = start_server("--kubeconfig", fake.kubeconfig("webhook"), "--namespace", NS,
                          wait=None)
    await asyncio.to_thread(server.wait, "/readyz")
    async with client.post(server.url, json=review) as response:
        assert (await response.json())["response"]["allowed"] is True
    fake.delete("changeapprovals", "chg-1234", "payments")
    for _ in range(100):
        async with client.post(server.url, json=review) as response:
            if not (await response.json())["response"]["allowed"]:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the deleted approval still admits")
    _, text = await asyncio.to_thread(server.get, "/metrics")
    assert "changegate_cache_synced 1.0" in text


@pytest.mark.parametrize("name", ["deployment-update", "deployment-create", "deployment-delete",
                                  "configmap-update", "configmap-create", "configmap-delete"])
@pytest.mark.parametrize("tamper", [False, True])
def test_compacted_approvals_decide_exactly_like_the_originals(name, tamper):
    import dataclasses

    from changegate.core.decision import Context, decide
    from changegate.core.review import parse_review
    from changegate.core.snapshot import ApprovalObject
    from tests.support import snapshot

    review = fixture(name)
    approval = copy.deepcopy(fresh(review, "bob", "carol"))  # its manifest IS the request's
    if tamper and approval["spec"].get("manifest"):  # what reviewers read is not what is signed
        approval["spec"]["manifest"]["metadata"].setdefault("labels", {})["x"] = "y"
    snap = snapshot()
    request = parse_review(review)
    now = datetime.now(UTC)
    answers = []
    for make in (ApprovalObject.from_object, compact_approval):
        world = dataclasses.replace(snap, approvals={"payments": (make(copy.deepcopy(approval)),)})
        d = decide(request, world, now, Context())
        answers.append((d.allowed, d.code, d.message, d.warnings, dict(d.audit)))
    assert answers[0] == answers[1]
    expected = "manifest_mismatch" if tamper and review["request"]["object"] else "approved"
    assert answers[1][1] == expected
