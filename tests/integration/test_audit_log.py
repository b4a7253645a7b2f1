"""The audit line: one JSON object per decision, in the shape of every other log line,
written out before the answer it records is sent."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from changegate import logs
from changegate.core.decision import Context, decide
from tests.integration.conftest import write_state
from tests.support import NOW, fixture, request_of, snapshot


@pytest.fixture
def stream():
    raw = io.BytesIO()
    # A buffered text stream, as a pipe is: what is not flushed is not in `raw`.
    text = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    logs.setup("info", stream=text)
    yield raw
    logs.setup("info")


def lines(raw: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in raw.getvalue().decode().splitlines()]


def test_each_audit_line_is_out_when_audit_returns_whole_json_in_order(stream):
    logging.getLogger("changegate.test").warning("before")
    review = fixture("deployment-update")
    request = request_of(review)
    decision = decide(request, snapshot(), NOW, Context())
    for index in range(3):
        logs.audit(decision, request, uid=f"uid-{index}", seconds=0.0012)
        assert f'"uid":"uid-{index}"'.encode() in stream.getvalue()  # flushed, not buffered
    first, *audit = lines(stream)
    assert first["msg"] == "before"
    assert [a["uid"] for a in audit] == ["uid-0", "uid-1", "uid-2"]
    record = audit[0]
    assert list(record)[:4] == ["ts", "level", "logger", "msg"]
    assert (record["level"], record["logger"], record["msg"]) == (
        "info", "changegate.audit", "admission")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(record["ts"]))
    assert record["decision"] == "denied" and record["reason"] == "no_approval"
    assert record["user"] == "alice" and record["durationMs"] == 1.2


def test_a_config_change_is_logged_with_what_it_changes(stream):
    review = fixture("configmap-update")
    req = review["request"]
    req["namespace"] = "changegate"
    req["name"] = "changegate-trust"
    for obj, names in ((req["oldObject"], ["bob"]), (req["object"], ["bob", "dave"])):
        obj["metadata"].update(namespace="changegate", name="changegate-trust")
        obj["data"] = {"approvers.yaml": "approvers:\n" + "".join(
            f"- name: {n}\n  keys: []\n" for n in names)}
    request = request_of(review)
    decision = decide(request, snapshot(), NOW, Context())
    assert decision.config_change is not None
    logs.audit(decision, request, uid="cfg", seconds=0.001)
    (record,) = lines(stream)
    assert record["config"] == "trust" and record["changedKeys"] == ["approvers.yaml"]
    assert record["approversAdded"] == ["dave"] and record["approversRemoved"] == []


async def test_the_record_is_in_the_log_when_the_answer_arrives(tmp_path, start_server, client):
    """A real serve writing to a file: the moment each response is read, its audit record
    is already there (no waiting), so a crash right after answering loses nothing."""
    server = start_server("--static", str(write_state(tmp_path / "s")))
    for index, name in enumerate(["deployment-update", "configmap-update", "deployment-create"]):
        review = fixture(name)
        review["request"]["uid"] = uid = f"audit-now-{index}"
        async with client.post(server.url, json=review) as response:
            answer = (await response.json())["response"]
            records = [r for r in server.log_records() if r.get("uid") == uid]
        assert answer["uid"] == uid
        assert len(records) == 1, server.logs()
        assert records[0]["msg"] == "admission"
        assert records[0]["decision"] == answer["auditAnnotations"][
            "decision"].split(":")[0]
