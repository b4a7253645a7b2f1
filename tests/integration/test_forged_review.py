"""Issue 18 item 1: a forged AdmissionReview must not change a later decision (SPEC §5).

Any pod can reach POST /validate. These post a forged review to a real `serve --static`
over real TLS, then the real review the API server would send for the same live object
(same uid, same resourceVersion), and check that the real one is decided on its own.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.conftest import write_state
from tests.support import approval_for, fixture, sign


def forged_from(real: dict[str, Any], old_object: dict[str, Any]) -> dict[str, Any]:
    """The review an attacker posts: the live object's uid and resourceVersion (anyone who
    may read the object knows them), with content of the attacker's choice."""
    forged = copy.deepcopy(real)
    req = forged["request"]
    req["uid"] = str(uuid.uuid4())
    meta = real["request"]["oldObject"]["metadata"]
    old = copy.deepcopy(old_object)
    old["metadata"]["uid"], old["metadata"]["resourceVersion"] = (meta["uid"],
                                                                  meta["resourceVersion"])
    req["oldObject"] = old
    return forged


async def answer(client: Any, server: Any, review: dict[str, Any]) -> dict[str, Any]:
    async with client.post(server.url, json=review) as response:
        assert response.status == 200, await response.text()
        body = (await response.json())["response"]
    assert body["uid"] == review["request"]["uid"]
    return body


async def test_a_forged_review_cannot_make_the_real_update_look_unchanged(
        tmp_path, start_server, client):
    """The forged review states the live object's uid and resourceVersion with the
    attacker's new content as the old object: if its digest were remembered by (uid,
    resourceVersion), alice's real, unapproved update would be `no_change` and admitted."""
    real = fixture("deployment-update")
    server = start_server("--static", str(write_state(tmp_path / "state")))
    forged = forged_from(real, real["request"]["object"])
    first = await answer(client, server, forged)
    assert first["allowed"] is True  # the forgery itself: old == new, nothing to gate
    assert first["auditAnnotations"]["decision"] == "allowed:no_change"

    response = await answer(client, server, real)
    assert response["allowed"] is False, response
    assert response["auditAnnotations"]["decision"] == "denied:no_approval"
    assert response["status"]["code"] == 403


async def test_a_forged_review_with_junk_cannot_freeze_an_object_against_its_approval(
        tmp_path, start_server, client):
    """The same trick with junk content: the approved change must still be admitted."""
    real = fixture("deployment-update")
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    approval = sign(approval_for(real, issued=issued), "bob", "carol")
    server = start_server("--static", str(write_state(tmp_path / "state", approval)))
    junk = copy.deepcopy(real["request"]["oldObject"])
    junk["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/evil:6.6.6"
    forged = forged_from(real, junk)
    assert (await answer(client, server, forged))["allowed"] is False  # no approval for it

    response = await answer(client, server, real)
    assert response["allowed"] is True, response
    assert response["auditAnnotations"]["decision"] == "allowed:approved"
    assert response["auditAnnotations"]["approvers"] == "bob,carol"


async def test_a_forged_changeapproval_review_changes_no_later_decision(
        tmp_path, start_server, client):
    """The ChangeApproval-validation path: a forged UPDATE of the stored approval (its own
    uid and resourceVersion, the signatures stripped) is judged and forgotten; the gated
    change is still decided on the approval as watched (here: as the directory holds it)."""
    real = fixture("deployment-update")
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    approval = sign(approval_for(real, issued=issued), "bob", "carol")
    server = start_server("--static", str(write_state(tmp_path / "state", approval)))
    stripped = copy.deepcopy(approval)
    stripped["spec"]["signatures"] = []
    forged = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "operation": "UPDATE", "namespace": "payments",
        "name": approval["metadata"]["name"],
        "kind": {"group": "changegate.io", "version": "v1alpha1", "kind": "ChangeApproval"},
        "resource": {"group": "changegate.io", "version": "v1alpha1",
                     "resource": "changeapprovals"},
        "userInfo": {"username": "mallory", "groups": ["system:authenticated"]},
        "object": stripped, "oldObject": approval, "dryRun": False}}
    refused = await answer(client, server, forged)
    assert refused["allowed"] is False  # signatures may only be appended

    response = await answer(client, server, real)
    assert response["allowed"] is True, response
    assert response["auditAnnotations"]["approvers"] == "bob,carol"
