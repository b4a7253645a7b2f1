"""One vocabulary of reason codes (changegate.core.reasons.ReasonCode): docs/contracts.md
lists it, and the tests produce every code of it. (The chart's alerts are held to it by
tests/chart/test_chart_monitoring.py, the metric label by tests/integration/test_metrics.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from changegate.core.decision import Context, decide
from changegate.core.reasons import Category, ReasonCode
from tests import reasons_seen
from tests.support import NOW, fixture, request_of, snapshot

REPO = Path(__file__).resolve().parents[2]


def documented() -> dict[str, set[str]]:
    """docs/contracts.md's reason code lists, by the category each list names."""
    text = (REPO / "docs" / "contracts.md").read_text()
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    category = None
    for line in section.splitlines():
        header = re.match(r"(Deny|Allow)\b.*\(category `(\w+)`.*\):$", line)
        if header:
            category = header[2]
            out[category] = set()
        elif not line.strip():  # a list ends at a blank line
            category = None
        elif category is not None:
            out[category].update(re.findall(r"`([a-z_]+)`", line))
    return out


def test_docs_list_every_code_under_its_category_and_nothing_else():
    expected = {c.value: {code.value for code in ReasonCode.of(c)} for c in Category}
    assert documented() == expected


def test_a_code_is_its_string_and_an_unknown_one_is_refused():
    assert ReasonCode.EXPIRED == "expired" and f"{ReasonCode.EXPIRED}" == "expired"
    assert ReasonCode("no_approval") is ReasonCode.NO_APPROVAL
    assert ReasonCode.NO_APPROVAL.category is Category.RULE
    with pytest.raises(ValueError, match="not a valid ReasonCode"):
        ReasonCode("trust_store_invalid")  # documented once, never emitted: gone


def test_every_reason_code_is_produced_by_some_test(request: pytest.FixtureRequest):
    """Run last (tests/reasons_seen.py): every code came out of some decision made by the
    unit tests or the in-process webhook tests, and no decision gave a code outside the
    enum."""
    if not reasons_seen.whole_session(request.config):
        pytest.skip("needs every test file of tests/unit and tests/integration in the session")
    assert {code.value for code in ReasonCode} - reasons_seen.SEEN == set()
    assert reasons_seen.SEEN - {code.value for code in ReasonCode} == set()


@pytest.mark.parametrize(("terminating", "code"), [(True, ReasonCode.NAMESPACE_TERMINATING),
                                                   (False, ReasonCode.NO_APPROVAL)])
def test_deleting_a_gated_object_of_a_namespace_being_deleted_is_admitted(terminating, code):
    """The namespace controller empties a terminating namespace; nobody approves that."""
    meta: dict[str, object] = {"name": "payments", "labels": {"tier": "tier-1"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-11-23T09:59:00Z"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    review = fixture("deployment-delete")
    decision = decide(request_of(review), snapshot(namespace), NOW, Context())
    assert decision.code == code
    assert decision.allowed is terminating
