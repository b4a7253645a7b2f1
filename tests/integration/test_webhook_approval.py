"""A change approved with two real Ed25519 signatures is admitted; one signature is not
enough; an approval dropped into --static DIR while serving takes effect."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from changegate.core.digest import digest
from changegate.core.dsse import generate, sign_envelope
from changegate.core.statement import build_statement, format_time
from changegate.core.trust import load_trust_store
from tests.integration.conftest import write_state
from tests.support import fixture

BOB, CAROL = generate("ed25519"), generate("ed25519")


def trust() -> str:
    text = yaml.safe_dump({"approvers": [
        {"name": "bob", "namespaces": ["payments"], "keys": [BOB.public.pem()]},
        {"name": "carol", "namespaces": ["payments"], "keys": [CAROL.public.pem()]},
    ]})
    assert len(load_trust_store(text)) == 2  # the file is what the webhook will load
    return text


def approval(review: dict[str, Any], *signers: Any, name: str = "chg-77") -> dict[str, Any]:
    """A ChangeApproval built field by field from the core's statement and DSSE functions."""
    req = review["request"]
    now = datetime.now(UTC).replace(microsecond=0)
    old, new = req["oldObject"], req["object"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "payments",
              "name": req["name"], "uid": old["metadata"]["uid"]}
    record = {"id": "CHG-77", "url": "https://itsm.example/CHG-77"}
    fields = dict(cluster="", operation="UPDATE", from_digest=digest(old), to_digest=digest(new),
                  change_record=record, requested_by="alice", issued_at=now - timedelta(minutes=5),
                  expires_at=now + timedelta(hours=2), nonce=str(uuid.uuid4()))
    payload = build_statement(target=target, **fields)
    return {
        "apiVersion": "changegate.io/v1alpha1", "kind": "ChangeApproval",
        "metadata": {"name": name, "namespace": "payments", "uid": f"uid-{name}",
                     "resourceVersion": "1"},
        "spec": {
            "cluster": "", "operation": "UPDATE",
            "target": {k: v for k, v in target.items() if k != "namespace"},
            "fromDigest": fields["from_digest"], "toDigest": fields["to_digest"],
            "changeRecord": record, "requestedBy": "alice",
            "issuedAt": format_time(fields["issued_at"]),
            "expiresAt": format_time(fields["expires_at"]),
            "rollout": {"strategy": "direct"},
            "manifest": new,
            "statement": base64.b64encode(payload).decode(),
            "signatures": [sign_envelope(key, payload) for key in signers],
        },
    }


async def decide(client: Any, server: Any, review: dict[str, Any]) -> dict[str, Any]:
    async with client.post(server.url, json=review) as response:
        assert response.status == 200
        return (await response.json())["response"]


async def test_two_real_ed25519_signatures_admit_exactly_that_change(tmp_path, start_server,
                                                                     client):
    review = fixture("deployment-update")
    state = write_state(tmp_path / "state", approval(review, BOB, CAROL), trust=trust())
    server = start_server("--static", str(state))
    response = await decide(client, server, review)
    assert response["allowed"] is True, response
    audit = response["auditAnnotations"]
    assert audit["decision"] == "allowed:approved"
    assert audit["approvers"] == "bob,carol"
    assert audit["change-record"] == "CHG-77"
    assert audit["approval"] == "payments/chg-77"
    # A different change (same object, other image) is not covered by that approval.
    other = fixture("deployment-update")
    other["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    denied = await decide(client, server, other)
    assert denied["allowed"] is False
    assert "reason: digest_mismatch" in denied["status"]["message"]
    records = [r for r in server.log_records() if r.get("msg") == "admission"]
    allowed = next(r for r in records if r["allowed"])
    assert allowed["approvers"] == ["bob", "carol"] and allowed["record"] == "CHG-77"
    assert allowed["user"] == "alice" and allowed["fromDigest"].startswith("sha256:")
    assert "statement" not in str(records) and "signatures" not in str(records)


async def test_one_signature_is_not_enough_and_the_message_says_so(tmp_path, start_server,
                                                                   client):
    review = fixture("deployment-update")
    state = write_state(tmp_path / "state", approval(review, BOB), trust=trust())
    server = start_server("--static", str(state))
    response = await decide(client, server, review)
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "reason: approvals_insufficient" in message
    assert message.splitlines()[-1].endswith("approvals=1/2 record=CHG-77")


async def test_an_approval_added_to_the_static_directory_takes_effect_while_serving(
        tmp_path, start_server, client):
    review = fixture("deployment-update")
    state = write_state(tmp_path / "state", trust=trust())
    server = start_server("--static", str(state), "--static-poll-seconds", "0.1")
    assert (await decide(client, server, review))["allowed"] is False
    (state / "approval.yaml").write_text(yaml.safe_dump(approval(review, BOB, CAROL)))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await decide(client, server, review))["allowed"]:
            break
    else:
        raise AssertionError("the new approval never took effect")


async def test_sighup_reloads_the_static_directory_at_once(tmp_path, start_server, client):
    import json
    import signal
    import urllib.request

    review = fixture("deployment-update")
    state = write_state(tmp_path / "state", trust=trust())
    server = start_server("--static", str(state), "--static-poll-seconds", "3600")

    def generation() -> int:
        request = urllib.request.Request(server.metrics_url + "/readyz",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(json.loads(response.read())["generation"])

    before = generation()
    (state / "approval.yaml").write_text(yaml.safe_dump(approval(review, BOB, CAROL)))
    server.proc.send_signal(signal.SIGHUP)
    for _ in range(100):
        if generation() > before:
            break
        await asyncio.sleep(0.05)
    assert (await decide(client, server, review))["allowed"] is True
