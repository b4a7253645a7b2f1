"""The audit line: one JSON object per decision, in the shape of every other log line, and
nothing lost or reordered by its buffering."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest

from changegate import logs
from changegate.core.decision import Context, decide
from tests.support import NOW, fixture, request_of, snapshot


@pytest.fixture
def stream():
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    logs.setup("info", stream=text)
    yield raw
    logs.setup("info")


def lines(raw: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in raw.getvalue().decode().splitlines()]


async def test_buffered_lines_are_whole_json_in_order_after_earlier_text(stream):
    logging.getLogger("changegate.test").warning("before")  # text, through the handler
    review = fixture("deployment-update")
    request = request_of(review)
    decision = decide(request, snapshot(), NOW, Context())
    for index in range(3):
        logs.audit(decision, request, uid=f"uid-{index}", seconds=0.0012)
    assert b"uid-0" not in stream.getvalue()  # buffered: the request's path writes nothing
    await asyncio.sleep(logs._AuditLine.FLUSH_SECONDS * 3)  # the loop flushes the batch
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


def test_without_a_loop_each_line_is_written_at_once(stream):
    review = fixture("configmap-update")
    request = request_of(review)
    logs.audit(decide(request, snapshot(), NOW, Context()), request, uid="u", seconds=0.001)
    (record,) = lines(stream)
    assert record["uid"] == "u" and record["kind"] == "ConfigMap"


async def test_a_config_change_is_logged_with_what_it_changes(stream):
    """The trust store's diff is taken from the request's objects before the buffered
    record drops them."""
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
    await asyncio.sleep(logs._AuditLine.FLUSH_SECONDS * 3)
    (record,) = lines(stream)
    assert record["config"] == "trust" and record["changedKeys"] == ["approvers.yaml"]
    assert record["approversAdded"] == ["dave"] and record["approversRemoved"] == []
