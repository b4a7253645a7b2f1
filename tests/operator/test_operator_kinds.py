"""CREATE and DELETE approvals, ConfigMap targets, and what the operator leaves alone."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from changegate.core.compose import change_approval, statement_bytes
from changegate.core.digest import digest
from changegate.core.statement import parse_statement
from tests.operator.conftest import CONFIGMAPS, NS, START, eventually, sign, update_approval


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS}, "data": data}


def approval_for(name: str, *, operation: str, uid: str, from_digest: str, to_digest: str,
                 manifest: dict[str, Any] | None) -> dict[str, Any]:
    return change_approval(
        namespace=NS, name=name, cluster="",
        target={"apiVersion": "v1", "kind": "ConfigMap", "name": "flags", "uid": uid},
        operation=operation, from_digest=from_digest, to_digest=to_digest,
        record_id="CHG-77", record_url=None, requested_by="alice",
        issued_at=START - timedelta(minutes=1), expires_at=START + timedelta(hours=2),
        manifest=manifest, nonce=str(uuid.uuid4()))


async def test_a_delete_is_applied_when_the_object_is_gone(k8s, operator):
    await k8s.setup()
    live = await k8s.configmap(NS, "flags", {"beta": "on"})
    approval = sign(approval_for("chg-77-delete", operation="DELETE",
                                 uid=live["metadata"]["uid"], from_digest=digest(live),
                                 to_digest="none", manifest=None), "bob", "carol")
    async with operator():
        await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase("chg-77-delete") == "Approved")
        await k8s.delete(f"/api/v1/namespaces/{NS}/configmaps/flags")
        await eventually(lambda: k8s.phase("chg-77-delete") == "Applied")
    nonce = parse_statement(statement_bytes(approval)).predicate.nonce
    assert json.loads(k8s.ledger()[nonce])["target"] == \
        f"k8s://v1/namespaces/{NS}/configmaps/flags"
    assert "is gone" in k8s.condition("chg-77-delete", "Applied")["message"]


async def test_a_create_is_applied_when_the_new_object_has_the_digest(k8s, operator):
    await k8s.setup()
    manifest = configmap("flags", {"beta": "on"})
    approval = sign(approval_for("chg-77-create", operation="CREATE", uid="none",
                                 from_digest="none", to_digest=digest(manifest),
                                 manifest=manifest), "bob", "dave")
    async with operator():
        await k8s.create_approval(approval)
        await eventually(lambda: k8s.phase("chg-77-create") == "Approved")
        await k8s.configmap(NS, "other", {"beta": "on"})  # same data, another object
        await k8s.configmap(NS, "flags", {"beta": "off"})  # the object, not the approved data
        assert k8s.phase("chg-77-create") == "Approved"
        await k8s.patch(f"/api/v1/namespaces/{NS}/configmaps/flags", {"data": {"beta": "on"}})
        await eventually(lambda: k8s.phase("chg-77-create") == "Applied")
    flags = k8s.kube.obj(CONFIGMAPS, NS, "flags")
    assert flags["metadata"]["annotations"] == {
        "changegate.io/approval": f"CHG-77 {NS}/chg-77-create approved-by=bob,dave"}
    assert not (k8s.kube.obj(CONFIGMAPS, NS, "other")["metadata"].get("annotations"))


async def test_phases_owned_by_other_flows_are_left_alone(k8s, operator):
    live = await k8s.setup()
    approval, _ = update_approval(live)
    await k8s.create_approval(sign(approval, "bob", "carol"))
    await k8s.patch(f"/apis/changegate.io/v1alpha1/namespaces/{NS}/changeapprovals/chg-1234/"
                    "status", {"status": {"phase": "CanaryRunning"}})
    async with operator() as ctx:
        await eventually(lambda: ctx.metrics.exposition().count(b'phase="CanaryRunning"} 1.0'))
    assert k8s.approval("chg-1234")["status"] == {"phase": "CanaryRunning"}
