"""`changegate audit` against the fake API server: paged reads, -n/-A, the period flags and
each output, with senior approvers marked from the trust store."""

from __future__ import annotations

import json

import yaml

from changegate.workflow import audit as audit_module
from tests.support import key
from tests.unit.test_audit_report import ITEMS, NOW

NS = "payments"


def seed(kube) -> None:
    kube.now = NOW
    for item in ITEMS:
        kube.put(item)
    trust = yaml.safe_dump({"approvers": [
        {"name": "bob", "namespaces": [NS], "keys": [key("bob").public.pem()]},
        {"name": "erin", "namespaces": ["*"], "senior": True,
         "keys": [key("erin", "p256").public.pem()]}]})
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "changegate-trust", "namespace": "changegate"},
              "data": {"approvers.yaml": trust}})


def test_audit_pages_through_the_api_and_prints_json(kube, cg, monkeypatch):
    seed(kube)
    monkeypatch.setattr(audit_module, "PAGE", 2)
    result = cg("dana", "audit", "-n", NS, "-o", "json", "--from", "2026-11-20")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert [c["approval"] for c in report["changes"]] == [
        "payments/review-done", "payments/chg-1-deployment-checkout",
        "payments/chg-2-configmap-checkout-config", "payments/review-bg"]
    assert report["changes"][1]["approvers"][1] == {"name": "erin", "senior": True}
    assert report["to"] == "2026-11-30T12:00:00Z"  # the API server's clock
    lists = [q for _, m, q in kube.requests if m == "GET" and "changeapprovals" in q]
    assert len(lists) >= 4 and all("limit=2" in q for q in lists)
    assert sum("continue=" in q for q in lists) == len(lists) - 1
    assert "reading ChangeApprovals" not in result.err  # no progress off a terminal


def test_audit_all_namespaces_since_and_outputs(kube, cg, tmp_path):
    seed(kube)
    table = cg("dana", "audit", "-A", "--since", "3d")
    assert table.code == 0, table.err
    assert "Changes 2026-11-27T12:00:00Z .. 2026-11-30T12:00:00Z: 1" in table.out
    assert "shipping" in table.out
    csv = cg("dana", "audit", "-A", "--from", "2026-11-01", "--to", "2026-12-01", "-o", "csv")
    assert csv.out.count("\n") == 1 + 6  # the header and six changes (old-applied too)
    page = tmp_path / "audit.html"
    html = cg("dana", "audit", "-A", "-o", "html", "--out", str(page))
    assert html.code == 0 and page.read_text().startswith("<!DOCTYPE html>")


def test_audit_refuses_contradicting_flags(kube, cg):
    assert cg("dana", "audit", "--since", "3d", "--from", "2026-11-01").code == 2
    assert cg("dana", "audit", "--to", "2026-11-01").code == 2
    bad = cg("dana", "audit", "--from", "yesterday")
    assert bad.code == 2 and "is not a date" in bad.err


def test_audit_judges_overdue_reviews_by_the_published_review_deadline(kube, cg):
    seed(kube)
    owed = json.loads(cg("dana", "audit", "-A", "-o", "json").out)["reviewsOwed"]
    assert [o["overdue"] for o in owed] == [True, False]  # the default 24h
    info = kube.get("configmaps", "changegate", "changegate-info")
    info["data"]["reviewDeadline"] = "4d"
    kube.put(info)
    owed = json.loads(cg("dana", "audit", "-A", "-o", "json").out)["reviewsOwed"]
    assert [o["overdue"] for o in owed] == [False, False]
    assert owed[0]["deadline"] == "2026-12-01T03:00:00Z"
