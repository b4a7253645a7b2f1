"""Fail closed: every way the webhook itself can fail gives a denial that says why."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from changegate.config import ServeConfig
from changegate.core.snapshot import ApprovalObject, Snapshot
from changegate.webhook import app as webhook_module
from changegate.webhook.app import Webhook, make_app, make_metrics_app
from tests.support import fixture, sign, snapshot

DENY_LINE = "changegate: op=UPDATE from=none to=none approvals=0/2 record=none"


class Source:
    """A StateSource whose behaviour each test sets."""

    def __init__(self, snap: Snapshot | None = None, *, ready: bool = True) -> None:
        self._snap = snap or snapshot()
        self.ready = ready
        self.fail = False
        self.read_delay = 0.0
        self.fresh: tuple[ApprovalObject, ...] | None = None
        self.read_throughs: list[tuple[str, float]] = []
        self.reads_through = True

    def snapshot(self) -> Snapshot:
        if self.fail:
            raise RuntimeError("boom")
        return self._snap

    def not_ready_reason(self) -> str:
        return "waiting for the first list of changeapprovals"

    def may_read_through(self, namespace: str) -> bool:
        return self.reads_through

    async def read_through(self, namespace: str, timeout: float):  # type: ignore[no-untyped-def]
        self.read_throughs.append((namespace, timeout))
        await asyncio.sleep(self.read_delay)
        return self.fresh

    def may_look_up_namespace(self, name: str) -> bool:
        return False  # the snapshot is the whole truth here

    async def look_up_namespace(self, name: str, timeout: float) -> None:
        return None


async def answer(source: Source, review: dict[str, Any], **config: Any) -> dict[str, Any]:
    hook = Webhook(source, ServeConfig(**config))
    async with TestClient(TestServer(make_app(hook))) as client:
        response = await client.post("/validate", json=review)
        assert response.status == 200
        return (await response.json())["response"]


async def test_a_cache_not_yet_synced_denies_with_cache_not_ready():
    response = await answer(Source(ready=False), fixture("deployment-update"))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "reason: cache_not_ready" in message and "not loaded its state" in message
    assert message.splitlines()[-1] == DENY_LINE
    assert response["auditAnnotations"]["decision"] == "error:cache_not_ready"


async def test_a_dry_run_is_denied_too_when_the_cache_is_not_ready():
    response = await answer(Source(ready=False), fixture("deployment-update-dryrun"))
    assert response["allowed"] is False


async def test_an_exception_while_deciding_denies_with_internal_error():
    source = Source()
    source.fail = True
    response = await answer(source, fixture("deployment-update"))
    assert response["allowed"] is False
    assert "reason: internal_error" in response["status"]["message"]


async def test_an_exception_inside_decide_denies_with_internal_error(monkeypatch):
    def explode(*args: Any) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(webhook_module, "decide", explode)
    response = await answer(Source(), fixture("deployment-update-metadata-only"))
    assert response["allowed"] is False  # would have been allowed: no_change
    assert "reason: internal_error" in response["status"]["message"]


async def test_a_slow_read_through_hits_the_deadline_and_denies_in_time():
    source = Source()
    source.read_delay = 5.0
    loop = asyncio.get_running_loop()
    began = loop.time()
    response = await answer(source, fixture("deployment-update"), deadline_seconds=0.8)
    assert loop.time() - began < 1.5
    assert response["allowed"] is False
    assert "reason: deadline_exceeded" in response["status"]["message"]


async def test_a_decision_that_overruns_the_deadline_is_replaced_by_a_denial(monkeypatch):
    real = webhook_module.decide

    def slow(*args: Any) -> Any:
        import time

        time.sleep(0.3)  # sync work: asyncio.timeout cannot interrupt it
        return real(*args)

    monkeypatch.setattr(webhook_module, "decide", slow)
    response = await answer(Source(), fixture("deployment-update-metadata-only"),
                            deadline_seconds=0.2)
    assert response["allowed"] is False
    assert "reason: deadline_exceeded" in response["status"]["message"]


async def test_a_read_through_finding_a_just_created_approval_admits_the_change():
    review = fixture("deployment-update")
    from tests.support import approval_for

    approval = sign(approval_for(review, issued=_now_minus_hour()), "bob", "carol")
    source = Source()
    source.fresh = (ApprovalObject.from_object(approval),)
    response = await answer(source, review)
    assert response["allowed"] is True, response
    assert source.read_throughs and source.read_throughs[0][0] == "payments"
    assert 0 < source.read_throughs[0][1] <= webhook_module.READ_THROUGH_SECONDS


async def test_no_read_through_when_the_source_would_refuse_it():
    """Listed a moment ago (a storm of denials): the denial stands, without the call."""
    review = fixture("deployment-update")
    from tests.support import approval_for

    source = Source()
    source.reads_through = False
    source.fresh = (ApprovalObject.from_object(
        sign(approval_for(review, issued=_now_minus_hour()), "bob", "carol")),)
    response = await answer(source, review)
    assert response["allowed"] is False
    assert "reason: no_approval" in response["status"]["message"]
    assert source.read_throughs == []


@pytest.mark.parametrize("name", ["deployment-update-metadata-only", "deployment-rollout-restart"])
async def test_no_read_through_for_answers_an_approval_cannot_change(name):
    source = Source()
    await answer(source, fixture(name))
    assert source.read_throughs == []


async def test_probes_say_ready_only_when_the_source_is():
    source = Source(ready=False)
    hook = Webhook(source, ServeConfig())
    async with TestClient(TestServer(make_metrics_app(hook))) as client:
        assert (await client.get("/healthz")).status == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503
        assert "changeapprovals" in await not_ready.text()
        source.ready = True
        assert (await client.get("/readyz")).status == 200


def _now_minus_hour():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


async def test_readyz_tells_tools_the_generation_in_json():
    source = Source()
    source.generation = 7  # type: ignore[attr-defined]
    hook = Webhook(source, ServeConfig())
    async with TestClient(TestServer(make_metrics_app(hook))) as client:
        text = await (await client.get("/readyz")).text()
        assert text.startswith("ready") and "(generation 7)" in text
        body = await (await client.get("/readyz", headers={"Accept": "application/json"})).json()
        assert body == {"status": "ready", "generation": 7}
