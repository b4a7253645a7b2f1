"""`changegate audit`'s report (SPEC §10) on a fake set of ChangeApprovals as the operator
leaves them (§7a): applied approvals, break-glass and unexplained reviews owed or done,
approvals that expired unused, and the ones the period leaves out."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

from changegate.workflow.audit import Period, build_report, per_day
from changegate.workflow.audit_render import render_csv, render_html, render_table

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PERIOD = Period(start=datetime(2026, 11, 20, tzinfo=UTC), end=NOW)
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def ca(name: str, phase: str, *, ns: str = "payments", kind: str = "Deployment",
       target: str = "checkout", approvers: tuple[str, ...] = (), applied: str | None = None,
       expires: str = "2026-11-25T12:00:00Z", review: dict[str, Any] | None = None,
       assistance: str | None = None, requested_by: str = "alice",
       record: str = "CHG-1") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cluster": "", "target": {"apiVersion": "apps/v1", "kind": kind, "name": target,
                                  "uid": "u"},
        "operation": "UPDATE", "fromDigest": D1, "toDigest": D2,
        "changeRecord": {"id": record}, "requestedBy": requested_by,
        "issuedAt": "2026-11-25T08:00:00Z", "expiresAt": expires,
        "rollout": {"strategy": "direct"}, "statement": "e30=", "signatures": []}
    if assistance:
        spec["assistance"] = assistance
    status: dict[str, Any] = {"phase": phase, "approvers": list(approvers)}
    if applied:
        status["conditions"] = [
            {"type": "Approved", "status": "True", "lastTransitionTime": "2026-11-20T00:00:00Z"},
            {"type": "Applied", "status": "True", "lastTransitionTime": applied}]
    if review:
        status["review"] = review
    return {"apiVersion": "changegate.io/v1alpha1", "kind": "ChangeApproval",
            "metadata": {"name": name, "namespace": ns}, "spec": spec, "status": status}


ITEMS = [
    ca("chg-1-deployment-checkout", "Applied", approvers=("bob", "erin"),
       applied="2026-11-25T09:30:00Z", assistance="ai"),
    ca("chg-2-configmap-checkout-config", "Applied", kind="ConfigMap",
       target="checkout-config", approvers=("bob", "carol"), applied="2026-11-26T10:00:00Z",
       record="CHG-2"),
    ca("old-applied", "Applied", approvers=("bob", "carol"), applied="2026-11-02T10:00:00Z"),
    ca("review-bg", "ReviewOwed", requested_by="dana", review={
        "reason": "break-glass", "detail": "INC-7 rollback", "owedSince": "2026-11-27T03:00:00Z"}),
    ca("review-fresh", "ReviewOwed", ns="shipping", requested_by="dana", review={
        "reason": "unexplained", "detail": "kubectl-edit by mallory",
        "owedSince": "2026-11-30T08:00:00Z"}),
    ca("review-done", "Reviewed", approvers=("bob", "carol"), review={
        "reason": "break-glass", "detail": "INC-6", "owedSince": "2026-11-21T03:00:00Z"}),
    ca("chg-3-deployment-checkout", "Expired", approvers=("bob",), record="CHG-3",
       expires="2026-11-28T12:00:00Z"),
    ca("chg-4-deployment-checkout", "Pending", record="CHG-4"),
    ca("chg-5-deployment-checkout", "Approved", approvers=("bob", "carol"), record="CHG-5"),
]


def report() -> dict[str, Any]:
    return build_report(ITEMS, period=PERIOD, now=NOW, seniors=frozenset({"erin"}),
                        review_deadline=24 * 3600)


def test_every_gated_change_of_the_period_and_how_it_got_in():
    changes = report()["changes"]
    assert [(c["approval"], c["admittedBy"], c["time"]) for c in changes] == [
        ("payments/review-done", "break-glass", "2026-11-21T03:00:00Z"),
        ("payments/chg-1-deployment-checkout", "approval", "2026-11-25T09:30:00Z"),
        ("payments/chg-2-configmap-checkout-config", "approval", "2026-11-26T10:00:00Z"),
        ("payments/review-bg", "break-glass", "2026-11-27T03:00:00Z"),
        ("shipping/review-fresh", "unexplained", "2026-11-30T08:00:00Z"),
    ]
    first = changes[1]
    assert first == {
        "time": "2026-11-25T09:30:00Z", "namespace": "payments", "kind": "Deployment",
        "name": "checkout", "operation": "UPDATE", "fromDigest": D1, "toDigest": D2,
        "changeRecord": "CHG-1", "requestedBy": "alice",
        "approvers": [{"name": "bob", "senior": False}, {"name": "erin", "senior": True}],
        "assistance": "ai", "admittedBy": "approval",
        "approval": "payments/chg-1-deployment-checkout"}
    assert changes[0]["approvers"] == []  # a break-glass change had no approvers


def test_the_report_has_exactly_the_spec_shape():
    r = report()
    assert list(r) == ["kind", "from", "to", "changes", "reviewsOwed", "expiredUnused",
                       "counts"]
    assert (r["kind"], r["from"], r["to"]) == ("AuditReport", "2026-11-20T00:00:00Z",
                                               "2026-11-30T12:00:00Z")
    assert all(list(c) == ["time", "namespace", "kind", "name", "operation", "fromDigest",
                           "toDigest", "changeRecord", "requestedBy", "approvers",
                           "assistance", "admittedBy", "approval"] for c in r["changes"])


def test_reviews_owed_and_overdue_after_the_review_deadline():
    owed = report()["reviewsOwed"]
    assert [(o["approval"], o["overdue"], o["deadline"]) for o in owed] == [
        ("payments/review-bg", True, "2026-11-28T03:00:00Z"),
        ("shipping/review-fresh", False, "2026-12-01T08:00:00Z")]
    assert owed[0]["reason"] == "break-glass" and owed[0]["detail"] == "INC-7 rollback"


def test_approvals_that_expired_unused_and_nothing_still_in_flight():
    r = report()
    assert [e["approval"] for e in r["expiredUnused"]] == ["payments/chg-3-deployment-checkout"]
    listed = {c["approval"] for c in r["changes"]} | {e["approval"] for e in r["expiredUnused"]}
    assert not listed & {"payments/chg-4-deployment-checkout",
                         "payments/chg-5-deployment-checkout", "payments/old-applied"}


def test_counts_per_namespace():
    assert report()["counts"] == {
        "payments": {"changes": 4, "approval": 2, "break-glass": 2, "exempt": 0,
                     "unexplained": 0, "aiAssisted": 1, "reviewsOwed": 1, "reviewsOverdue": 1,
                     "expiredUnused": 1},
        "shipping": {"changes": 1, "approval": 0, "break-glass": 0, "exempt": 0,
                     "unexplained": 1, "aiAssisted": 0, "reviewsOwed": 1, "reviewsOverdue": 0,
                     "expiredUnused": 0},
    }


def test_per_day_covers_every_day_of_the_period():
    days = dict(per_day(report()))
    names = list(days)
    assert (names[0], names[-1], len(names)) == ("2026-11-20", "2026-11-30", 11)
    assert days["2026-11-25"]["approval"] == 1 and days["2026-11-27"]["break-glass"] == 1
    assert sum(sum(c.values()) for c in days.values()) == 5


def test_table_marks_seniors_and_names_each_section():
    text = render_table(report())
    assert "bob, erin*" in text
    assert "Reviews owed: 2 (1 overdue)" in text and "Approvals expired unused: 1" in text
    assert re.search(r"^payments\s+4\s+2\s+2\s+0\s+0\s+1\s+1\s+1\s+1$", text, re.M)


def test_csv_has_one_row_per_change():
    rows = list(csv.DictReader(io.StringIO(render_csv(report()))))
    assert len(rows) == 5 and rows[1]["approvers"] == "bob;erin*"
    assert rows[1]["assistance"] == "ai" and rows[0]["assistance"] == ""


def test_html_is_one_self_contained_page_with_a_chart():
    page = render_html(report())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<svg" in page and page.count("<rect") == 5  # one bar segment per day and way in
    assert "erin (senior)" in page
    # Nothing fetched: no scripts, no external references of any kind.
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)""",
                         page)


def test_html_escapes_what_users_wrote():
    evil = ca("x", "ReviewOwed", review={"reason": "break-glass",
                                         "detail": "<script>alert(1)</script>",
                                         "owedSince": "2026-11-27T03:00:00Z"})
    page = render_html(build_report([evil], period=PERIOD, now=NOW, seniors=frozenset(),
                                    review_deadline=3600))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_headless_chromium_renders_the_page_without_console_errors(tmp_path):
    from tests.browser import ARTIFACTS, render

    page = tmp_path / "audit.html"
    page.write_text(render_html(report()))
    shown = render(page, ARTIFACTS / "audit-unit.png")
    assert shown.console == []
    assert "Tier-1 changes" in shown.dom and "<svg" in shown.dom
    assert shown.dom.count("<rect") == 5
    # The console check itself catches a page that does write an error.
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>console.error('boom');"
                      "</script></body></html>")
    assert any("boom" in line for line in render(broken, None).console)
