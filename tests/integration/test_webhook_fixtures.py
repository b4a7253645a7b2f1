"""Every shared fixture, sent over real TLS to a running `changegate serve --static`."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.integration.conftest import fixture_names
from tests.support import FIXTURE_VERDICTS, fixture

EXPECTED = FIXTURE_VERDICTS
DIGEST = r"(sha256:[0-9a-f]{64}|none)"
MACHINE_LINE = re.compile(rf"^changegate: op=(CREATE|UPDATE|DELETE) from={DIGEST} to={DIGEST} "
                          r"approvals=\d+/\d+ record=\S+$")


def test_the_table_covers_every_fixture_in_the_shared_directory():
    assert sorted(EXPECTED) == fixture_names()


async def post(client: Any, server: Any, review: dict[str, Any]) -> dict[str, Any]:
    async with client.post(server.url, json=review) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_fixture_is_answered_as_its_readme_says(name, static_server, client):
    review = fixture(name)
    answer = await post(client, static_server, review)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is EXPECTED[name], response
    for warning in response.get("warnings", []):
        assert len(warning) < 256, warning
    audit = response["auditAnnotations"]
    outcome = audit["decision"]
    assert re.fullmatch(r"(allowed|denied|warned):[a-z_]+", outcome)
    assert re.fullmatch(DIGEST, audit["from"])
    assert re.fullmatch(DIGEST, audit["to"])
    if response["allowed"]:
        assert "status" not in response
        return
    status = response["status"]
    assert status["code"] == 403
    lines = status["message"].splitlines()
    assert MACHINE_LINE.match(lines[-1]), lines[-1]
    op = review["request"]["operation"]
    assert lines[-1].startswith(f"changegate: op={op} ")
    assert f"from={audit['from']} to={audit['to']}" in lines[-1]
    assert "approvals=0/2" in lines[-1]
    assert any(line.strip().startswith("next: ") for line in lines), "nothing to act on"
    assert outcome.startswith("denied:")


async def test_a_denial_names_what_is_missing_and_the_command_to_request_it(static_server,
                                                                            client):
    response = (await post(client, static_server, fixture("deployment-update")))["response"]
    message = response["status"]["message"]
    assert "no ChangeApproval" in message
    assert "changegate request" in message and "changegate approve" in message
    assert "reason: no_approval" in message


async def test_a_dry_run_that_would_be_denied_is_admitted_with_would_deny_warnings(
        static_server, client):
    response = (await post(client, static_server, fixture("deployment-update-dryrun")))[
        "response"]
    assert response["allowed"] is True
    warnings = response["warnings"]
    assert warnings[0].startswith("changegate: would DENY: no_approval")
    audit = response["auditAnnotations"]
    assert audit["decision"] == "warned:no_approval"
    # each digest on its own warning line, so none is cut at 256 characters
    assert f"changegate: from {audit['from']}" in warnings
    assert f"changegate: to {audit['to']}" in warnings
    assert MACHINE_LINE.match(warnings[-1])


async def test_a_metadata_only_update_is_not_a_change(static_server, client):
    response = (await post(client, static_server, fixture("deployment-update-metadata-only")))[
        "response"]
    assert response["allowed"] is True
    assert response["auditAnnotations"]["decision"] == "allowed:no_change"
    assert "warnings" not in response


async def test_break_glass_by_a_configured_group_is_admitted_loudly(tmp_path, start_server,
                                                                    client):
    from tests.integration.conftest import write_state

    server = start_server("--static", str(write_state(tmp_path / "bg")),
                          "--break-glass-groups", "sre-oncall")
    response = (await post(client, server, fixture("deployment-break-glass")))["response"]
    assert response["allowed"] is True
    assert response["auditAnnotations"]["decision"] == "allowed:break_glass"
    assert any("BREAK-GLASS by dana" in w for w in response["warnings"])
    _, text = server.get("/metrics")
    assert 'changegate_break_glass_total{namespace="payments"} 1.0' in text
