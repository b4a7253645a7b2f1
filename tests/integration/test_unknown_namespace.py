"""SPEC §5 (issue 18 item 7, the webhook's side): a namespace the cache has not seen is
looked up once within the deadline, from the API server, for that decision only; while it
stays unknown, the write is denied. KubeCache against the fake API with its watch held."""

from __future__ import annotations

import copy
from typing import Any

from tests.fakeapi import FakeKube, namespace
from tests.integration.test_cache import ask, eventually, seed
from tests.support import fixture


def moved(review: dict[str, Any], to: str) -> dict[str, Any]:
    review = copy.deepcopy(review)
    req = review["request"]
    req["namespace"] = to
    for obj in (req["object"], req["oldObject"]):
        obj["metadata"]["namespace"] = to
    return review


def gets(api: FakeKube, name: str) -> int:
    return sum(1 for _, method, path in api.requests
               if method == "GET" and path.split("?")[0] == f"/api/v1/namespaces/{name}")


async def test_a_namespace_created_a_moment_ago_is_looked_up_and_judged_by_its_labels(
        fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready and len(fake.watchers) == 4)
    fake.hold_events("namespaces")  # the watch lags behind the create
    fake.put(namespace("scratch"))  # not tier-1: nothing to gate there
    response = await ask(cache, moved(fixture("deployment-update"), "scratch"))
    assert response["allowed"] is True, response
    assert response["auditAnnotations"]["decision"] == "allowed:not_gated"
    assert gets(fake, "scratch") == 1
    assert "scratch" not in cache.snapshot().namespaces  # only that decision saw it
    fake.release_events("namespaces")
    await eventually(lambda: "scratch" in cache.snapshot().namespaces)
    await ask(cache, moved(fixture("deployment-update"), "scratch"))
    assert gets(fake, "scratch") == 1  # known now: no second look


async def test_a_tier1_namespace_not_yet_watched_is_gated(fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready and len(fake.watchers) == 4)
    fake.hold_events("namespaces")
    fake.put(namespace("fresh", {"tier": "tier-1"}))
    response = await ask(cache, moved(fixture("deployment-update"), "fresh"))
    assert response["allowed"] is False, response
    assert gets(fake, "fresh") == 1


async def test_a_namespace_that_does_not_exist_stays_unknown_and_is_denied(fake, make_cache):
    seed(fake)
    fake.start()
    cache = await make_cache(fake)
    await eventually(lambda: cache.ready and len(fake.watchers) == 4)
    for _ in range(5):  # a forged review naming it, again and again
        response = await ask(cache, moved(fixture("deployment-update"), "nowhere"))
        assert response["allowed"] is False, response
    assert 1 <= gets(fake, "nowhere") <= 2  # bounded: at most one GET per interval
