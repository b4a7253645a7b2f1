"""The ledger of used nonces on the fake API server: shards, idempotence, optimistic
concurrency (409 -> re-read -> retry) and pruning after expiry."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from changegate import kube as kube_clients
from changegate.operator import ledger
from changegate.operator.api import Api
from changegate.operator.ledger import LedgerEntry, LedgerError
from tests.operator.conftest import CONFIGMAPS, CONTROLLER_NS, START

SOON = "2026-11-23T12:00:00Z"


@pytest.fixture
async def api(kubeconfig):
    client = Api(await kube_clients.async_client(kubeconfig))
    yield client
    await client.close()


def entry(name: str = "chg-1", expires: str = SOON) -> LedgerEntry:
    return LedgerEntry(f"payments/{name}", f"uid-{name}",
                       "k8s://apps/v1/namespaces/payments/deployments/checkout", expires)


def nonce(first: str = "3") -> str:
    return first + str(uuid.uuid4())[1:]


def stored(kube, digit: str) -> dict[str, str]:
    found = kube.obj(CONFIGMAPS, CONTROLLER_NS, f"changegate-ledger-{digit}") or {}
    return found.get("data") or {}


def test_a_nonce_goes_to_the_shard_of_its_first_hex_digit():
    assert ledger.shard("a" + str(uuid.uuid4())[1:]) == "changegate-ledger-a"
    for bad in ("{" + str(uuid.uuid4()) + "}", "urn:uuid:" + str(uuid.uuid4()),
                str(uuid.uuid4()).upper(), uuid.uuid4().hex):
        with pytest.raises(LedgerError, match="not a lowercase UUID"):
            ledger.shard(bad)


async def test_ensure_creates_the_sixteen_shards_once(kube, api):
    await ledger.ensure(api, CONTROLLER_NS, START)
    names = [f"changegate-ledger-{d}" for d in "0123456789abcdef"]
    assert all(kube.obj(CONFIGMAPS, CONTROLLER_NS, n) is not None for n in names)
    writes = kube.write_count
    await ledger.ensure(api, CONTROLLER_NS, START)
    assert kube.write_count == writes  # nothing to create, nothing to prune


async def test_recording_writes_the_entry_as_json_under_the_nonce(kube, api):
    n = nonce()
    assert await ledger.record(api, CONTROLLER_NS, n, entry(), START) == entry()
    assert json.loads(stored(kube, "3")[n]) == {
        "approval": "payments/chg-1", "uid": "uid-chg-1",
        "target": "k8s://apps/v1/namespaces/payments/deployments/checkout", "expiresAt": SOON}


async def test_recording_again_returns_what_is_stored_and_writes_nothing(kube, api):
    n = nonce()
    await ledger.record(api, CONTROLLER_NS, n, entry("first"), START)
    writes = kube.write_count
    assert await ledger.record(api, CONTROLLER_NS, n, entry("second"), START) == entry("first")
    assert kube.write_count == writes


async def test_a_conflict_is_read_again_and_retried_without_losing_either_nonce(kube, api):
    await ledger.ensure(api, CONTROLLER_NS, START)
    a, b = nonce(), nonce()
    await ledger.record(api, CONTROLLER_NS, a, entry("a"), START)
    kube.conflicts["changegate-ledger-3"] = 2  # another writer got in, twice
    await ledger.record(api, CONTROLLER_NS, b, entry("b"), START)
    assert set(stored(kube, "3")) == {a, b}
    assert kube.conflicts["changegate-ledger-3"] == 0


async def test_endless_conflicts_fail_loudly(kube, api):
    await ledger.ensure(api, CONTROLLER_NS, START)
    kube.conflicts["changegate-ledger-3"] = 100
    with pytest.raises(LedgerError, match="kept changing"):
        await ledger.record(api, CONTROLLER_NS, nonce(), entry(), START)


async def test_entries_go_only_well_after_they_expired(kube, api):
    old, recent, unreadable = nonce(), nonce(), nonce()
    await ledger.record(api, CONTROLLER_NS, old, entry("old", "2026-11-23T09:00:00Z"), START)
    await ledger.record(api, CONTROLLER_NS, recent, entry("recent", "2026-11-23T09:55:00Z"),
                        START)
    kube_data = {unreadable: "not json"}
    await _patch(kube, kube_data)
    later = START + timedelta(seconds=1)  # old: 61 min ago; recent: 5 min ago, in the grace
    await ledger.record(api, CONTROLLER_NS, nonce(), entry("new"), later)
    data = stored(kube, "3")
    assert old not in data and recent in data and unreadable in data
    assert LedgerEntry.from_json(data[unreadable]).approval == "?"  # still counts as used


async def _patch(kube, data):
    status, _ = await kube.request("PATCH", f"/api/v1/namespaces/{CONTROLLER_NS}/configmaps/"
                                   "changegate-ledger-3", {"data": data},
                                   content_type="application/merge-patch+json")
    assert status == 200
