"""The operator against the tests' fake API server (tests/fakeapi.py), with a clock the test
moves. Real Ed25519/P-256 keys and signatures, made with the core, throughout."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from changegate.core.compose import change_approval, signed
from changegate.core.digest import digest
from changegate.core.snapshot import ProcessConfig
from changegate.operator.app import run
from changegate.operator.context import Context
from tests.fakeapi import FakeKube
from tests.support import key, trust_yaml

CONTROLLER_NS = "changegate"
NS = "payments"
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CHANGEAPPROVALS = "changegate.io/v1alpha1/changeapprovals"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


async def eventually(probe: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll until ``probe()`` is truthy; its last value is in the failure message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or probe}: last saw {last!r}")


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    # Plain HTTP: kopf's shutdown does not wait for TLS connections to finish closing
    # (close_notify), so every run would leave sockets that pytest reports as leaked.
    fake = FakeKube(tmp_path, tls=False).start()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def kubeconfig(kube: FakeKube) -> str:
    return kube.kubeconfig("operator-token")


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


class Cluster:
    """The fake cluster's contents, written through the API (so watches see them)."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.kube.request("POST", path, body)
        assert status < 300, answer
        return dict(answer)

    async def patch(self, path: str, body: Any) -> dict[str, Any]:
        kind = "application/json-patch+json" if isinstance(body, list) else \
            "application/merge-patch+json"
        status, answer = await self.kube.request("PATCH", path, body, content_type=kind)
        assert status < 300, answer
        return dict(answer)

    async def delete(self, path: str) -> None:
        status, answer = await self.kube.request("DELETE", path)
        assert status < 300, answer

    async def setup(self, *, policy: str = "", trust: str | None = None,
                    namespace_annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Controller namespace with trust store and policy; tier-1 `payments` with a
        Deployment `checkout`. Returns the live Deployment."""
        await self.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": CONTROLLER_NS}})
        await self.post("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NS, "labels": {"tier": "tier-1"},
                         "annotations": namespace_annotations or {}}})
        await self.configmap(CONTROLLER_NS, "changegate-trust",
                             {"approvers.yaml": trust if trust is not None else trust_yaml()})
        await self.configmap(CONTROLLER_NS, "changegate-policy", {"policy.yaml": policy})
        return await self.post(f"/apis/apps/v1/namespaces/{NS}/deployments", deployment())

    async def configmap(self, namespace: str, name: str, data: dict[str, str]
                        ) -> dict[str, Any]:
        return await self.post(f"/api/v1/namespaces/{namespace}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data})

    async def create_approval(self, approval: dict[str, Any]) -> dict[str, Any]:
        return await self.post(f"/apis/changegate.io/v1alpha1/namespaces/{NS}/changeapprovals",
                               approval)

    async def add_signatures(self, name: str, approval: dict[str, Any]) -> None:
        await self.patch(f"/apis/changegate.io/v1alpha1/namespaces/{NS}/changeapprovals/{name}",
                         {"spec": {"signatures": approval["spec"]["signatures"]}})

    async def apply_deployment(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        await self.patch(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}",
                         {"spec": manifest["spec"]})

    def approval(self, name: str) -> dict[str, Any]:
        return self.kube.obj(CHANGEAPPROVALS, NS, name) or {}

    def phase(self, name: str) -> str:
        return str((self.approval(name).get("status") or {}).get("phase") or "")

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        for c in (self.approval(name).get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return c
        return {}

    def ledger(self) -> dict[str, str]:
        data: dict[str, str] = {}
        for digit in "0123456789abcdef":
            cm = self.kube.obj(CONFIGMAPS, CONTROLLER_NS, f"changegate-ledger-{digit}") or {}
            data.update(cm.get("data") or {})
        return data

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.kube.events(NS, name)]


@pytest.fixture
def k8s(kube: FakeKube) -> Cluster:
    return Cluster(kube)


def deployment(image: str = "registry.example/checkout:1.0") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "checkout", "namespace": NS, "labels": {"app": "checkout"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": {"metadata": {"labels": {"app": "checkout"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def update_approval(live: dict[str, Any], *, name: str = "chg-1234", record: str = "CHG-1234",
                    image: str = "registry.example/checkout:2.0", now: datetime = START,
                    lifetime: timedelta = timedelta(hours=4), nonce: str | None = None,
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """An unsigned approval to change the live Deployment's image, and its manifest."""
    manifest = copy.deepcopy(live)
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = image
    approval = change_approval(
        namespace=NS, name=name, cluster="",
        target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": live["metadata"]["uid"]},
        operation="UPDATE", from_digest=digest(live), to_digest=digest(manifest),
        record_id=record, record_url=None, requested_by="alice",
        issued_at=now - timedelta(minutes=5), expires_at=now - timedelta(minutes=5) + lifetime,
        manifest=manifest, nonce=nonce or str(uuid.uuid4()))
    return approval, manifest


def sign(approval: dict[str, Any], *names: str) -> dict[str, Any]:
    return signed(approval, *(key(n, "p256" if n == "erin" else "ed25519") for n in names))


async def settle(kube: FakeKube, quiet: float = 0.3) -> None:
    """Wait until the operator has written nothing for ``quiet`` seconds. Stopping kopf in
    the middle of a write cycle leaves a timer it spawns after its daemon killer ran,
    which kopf then waits 5 s for ("hung tasks"): harmless, but slow for tests."""
    def writes() -> int:
        return kube.write_count

    loop = asyncio.get_running_loop()
    seen, since, deadline = writes(), loop.time(), loop.time() + 10
    while loop.time() < deadline and loop.time() - since < quiet:
        await asyncio.sleep(0.05)
        if writes() != seen:
            seen, since = writes(), loop.time()


OperatorFactory = Callable[[], contextlib.AbstractAsyncContextManager[Context]]


@pytest.fixture
def operator(kube: FakeKube, kubeconfig: str, clock: Clock) -> OperatorFactory:
    """``async with operator() as ctx:`` runs the operator; leaving the block stops it.
    Each run is a fresh process as far as state goes: new registry, indices, memory.

    It runs in its own thread and event loop, as kopf.testing.KopfRunner does: on exit
    kopf waits for every task started while it ran, and in the test's loop those include
    the fake server's watch handlers, which linger until their next event."""

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[Context]:
        ctx = Context(process=ProcessConfig(namespace=CONTROLLER_NS), kubeconfig=kubeconfig,
                      clock=clock, resync=0.2)
        started: dict[str, Any] = {}

        async def main() -> None:
            started["loop"], started["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await run(ctx, standalone=True, metrics_host="127.0.0.1", metrics_port=0,
                      stop_flag=started["stop"])

        def thread_main() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # re-raised in the test
                started["error"] = exc

        thread = threading.Thread(target=thread_main, name="operator", daemon=True)
        thread.start()
        try:
            await eventually(lambda: ctx.client is not None or not thread.is_alive(),
                             what="operator startup")
            yield ctx
            await settle(kube)
        finally:
            if "stop" in started:
                started["loop"].call_soon_threadsafe(started["stop"].set)
            await asyncio.to_thread(thread.join, 30)
        if "error" in started:
            raise started["error"]

    return running


Waiter = Callable[..., Awaitable[Any]]
