"""Issue 18 items 1 and 8, on a real `serve --static` over real TLS, read from /metrics:
no label value a request body chooses is counted unchecked, and a dry-run counts as a
request only (never as break-glass, a policy or a config change)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import write_state
from tests.support import fixture, trust_yaml

POLICY = "breakGlassGroups: [sre-oncall]\npolicyAdminGroups: [platform-admins]\n"


def samples(server: Any, name: str) -> list[dict[str, str]]:
    status, text = server.get("/metrics")
    assert status == 200
    return [dict(s.labels, value=s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name]


async def post(client: Any, server: Any, review: dict[str, Any]) -> dict[str, Any]:
    review = copy.deepcopy(review)
    review["request"]["uid"] = str(uuid.uuid4())
    async with client.post(server.url, json=review) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["response"]


def in_namespace(review: dict[str, Any], namespace: str) -> dict[str, Any]:
    review = copy.deepcopy(review)
    req = review["request"]
    req["namespace"] = namespace
    for obj in (req.get("object"), req.get("oldObject")):
        if obj:
            obj["metadata"]["namespace"] = namespace
    return review


async def test_labels_a_request_body_chooses_are_bounded(tmp_path, start_server, client):
    server = start_server("--static", str(write_state(tmp_path / "state", policy=POLICY)))
    real = fixture("deployment-update")
    assert not (await post(client, server, real))["allowed"]  # payments: watched, tier-1
    # Forged reviews naming namespaces nobody created, and kinds nobody registered.
    for _ in range(20):
        await post(client, server, in_namespace(real, f"evil-{uuid.uuid4().hex}"))
        odd = copy.deepcopy(real)
        odd["request"]["resource"] = {"group": "x.example", "version": "v1",
                                      "resource": f"r{uuid.uuid4().hex}"}
        odd["request"]["kind"] = {"group": "x.example", "version": "v1",
                                  "kind": f"K{uuid.uuid4().hex}"}
        await post(client, server, odd)

    rejected = samples(server, "changegate_rejected_changes_total")
    assert {s["namespace"] for s in rejected} == {"payments", "other"}, rejected
    assert sum(s["value"] for s in rejected if s["namespace"] == "other") == 20
    requests = samples(server, "changegate_admission_requests_total")
    assert {s["kind"] for s in requests} <= {"Deployment", "other"}, requests
    durations = samples(server, "changegate_admission_duration_seconds_count")
    assert {s["kind"] for s in durations} <= {"Deployment", "other"}, durations
    # A namespace that exists but is not gated is no label either.
    assert all(not s["namespace"].startswith("evil-") for s in rejected)


async def test_a_dry_run_is_no_break_glass_nor_policy_nor_config_change(
        tmp_path, start_server, client):
    server = start_server("--static", str(write_state(tmp_path / "state", policy=POLICY)))
    glass = fixture("deployment-break-glass")
    dry = copy.deepcopy(glass)
    dry["request"]["dryRun"] = True
    assert (await post(client, server, dry))["allowed"]
    ns_old = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": "payments", "labels": {"tier": "tier-1"}}}
    ns_new = copy.deepcopy(ns_old)
    ns_new["metadata"]["labels"] = {}
    loosen = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "", "operation": "UPDATE", "namespace": "", "name": "payments",
        "kind": {"group": "", "version": "v1", "kind": "Namespace"},
        "resource": {"group": "", "version": "v1", "resource": "namespaces"},
        "userInfo": {"username": "pat", "groups": ["platform-admins"]},
        "object": ns_new, "oldObject": ns_old, "dryRun": True}}
    assert (await post(client, server, loosen))["allowed"]
    trust_old = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "changegate-trust", "namespace": "changegate"},
                 "data": {"approvers.yaml": trust_yaml()}}
    trust_new = copy.deepcopy(trust_old)
    trust_new["data"]["approvers.yaml"] = trust_yaml([
        {"name": "mallory", "namespaces": ["*"], "keys": []}])
    config = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "", "operation": "UPDATE", "namespace": "changegate",
        "name": "changegate-trust",
        "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "userInfo": {"username": "mallory", "groups": ["system:authenticated"]},
        "object": trust_new, "oldObject": trust_old, "dryRun": True}}
    await post(client, server, config)

    assert samples(server, "changegate_break_glass_total") == []
    assert samples(server, "changegate_policy_changes_total") == []
    assert samples(server, "changegate_config_changes_total") == []

    # The same writes for real are counted, each where it belongs.
    assert (await post(client, server, glass))["allowed"]
    loosen["request"]["dryRun"] = False
    assert (await post(client, server, loosen))["allowed"]
    config["request"]["dryRun"] = False
    refused = await post(client, server, config)
    assert not refused["allowed"]
    assert [(s["namespace"], s["value"]) for s in samples(
        server, "changegate_break_glass_total")] == [("payments", 1.0)]
    assert [(s["namespace"], s["allowed"], s["value"]) for s in samples(
        server, "changegate_policy_changes_total")] == [("payments", "true", 1.0)]
    # A refused write is counted as refused: it loosened nothing (SPEC §8, `allowed`).
    assert [(s["config"], s["loosened"], s["allowed"], s["value"]) for s in samples(
        server, "changegate_config_changes_total")] == [("trust", "true", "false", 1.0)]
