"""SPEC §10: after approved changes, a break-glass change and an approval that expired
unused, `changegate audit -n NS -o json` lists exactly those (the break-glass change from
the review the operator owes for it, SPEC §7a), and `-o html` is a page headless
Chromium renders without console errors (its screenshot is kept in tests/artifacts/)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.browser import ARTIFACTS, render

from .stories import Gate, configmap, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def phase(gate: Gate, ns: str, name: str) -> str:
    return str((gate.approval(ns, name).get("status") or {}).get("phase") or "")


def test_audit_lists_exactly_the_changes_and_the_expired_approval(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s11-audit", deployment("checkout", "1.41.0"),
                        configmap("checkout-config", {"TIMEOUT_MS": "2500"}))
    release = write_manifest(tmp_path / "release.yaml", deployment("checkout", "1.42.0"),
                             configmap("checkout-config", {"TIMEOUT_MS": "250"}))
    dep, cm = "chg-11001-deployment-checkout", "chg-11001-configmap-checkout-config"
    # An AI-assisted release: bob and dana (senior) approve, alice applies with kubectl.
    req = gate.changegate("alice", "request", "-f", str(release), "-n", ns, "--record",
                          "CHG-11001", "--assisted", "ai")
    assert req.rc == 0, req.text
    gate.approve("CHG-11001", ns, "bob", "dana")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(release))
    assert r.rc == 0, r.text
    for name in (dep, cm):
        wait_for(lambda n=name: phase(gate, ns, n) == "Applied", f"{name} Applied", timeout=60)

    # dana (on call) rolls the Deployment back by break-glass: the operator owes a review.
    glass = write_manifest(tmp_path / "glass.yaml", deployment(
        "checkout", "1.41.0", annotations={"changegate.io/break-glass": "INC-11 rollback by dana"}))
    r = gate.kubectl("dana", "apply", "-n", ns, "-f", str(glass))
    assert r.rc == 0, r.text
    glass_digest = gate.live_digest("deployment", "checkout", ns)

    def review_owed() -> str | None:
        listed = gate.kubectl("admin", "get", "changeapprovals", "-n", ns, "-o", "json")
        return next((i["metadata"]["name"] for i in json.loads(listed.out)["items"]
                     if (i.get("status") or {}).get("phase") == "ReviewOwed"), None)

    owed_name = wait_for(review_owed, "the review owed for dana's break-glass", timeout=60)

    # A second change requested, signed once, never applied: it expires unused.
    later = write_manifest(tmp_path / "later.yaml", deployment("checkout", "1.43.0"))  # from 1.41.0
    req = gate.changegate("alice", "request", "-f", str(later), "-n", ns, "--record",
                          "CHG-11002", "--expires", "15s")
    assert req.rc == 0, req.text
    gate.approve("CHG-11002", ns, "bob")
    expired = "chg-11002-deployment-checkout"
    wait_for(lambda: phase(gate, ns, expired) == "Expired", f"{expired} Expired", timeout=90,
             interval=1.0)

    out = gate.changegate("admin", "audit", "-n", ns, "-o", "json")
    assert out.rc == 0, out.text
    report = json.loads(out.out)
    assert report["kind"] == "AuditReport"
    changes = report["changes"]
    assert sorted(c["approval"] for c in changes) == sorted(
        [f"{ns}/{dep}", f"{ns}/{cm}", f"{ns}/{owed_name}"])
    [glass_change] = [c for c in changes if c["admittedBy"] == "break-glass"]
    assert (glass_change["kind"], glass_change["name"]) == ("Deployment", "checkout")
    assert glass_change["toDigest"] == glass_digest and glass_change["approvers"] == []
    assert glass_change["requestedBy"] == "dana"
    [owed] = report["reviewsOwed"]
    assert (owed["approval"], owed["reason"], owed["overdue"]) == (
        f"{ns}/{owed_name}", "break-glass", False)
    for change in (c for c in changes if c["admittedBy"] == "approval"):
        live = change["kind"].lower()
        assert change["admittedBy"] == "approval" and change["assistance"] == "ai"
        assert change["approvers"] == [{"name": "bob", "senior": False},
                                       {"name": "dana", "senior": True}]
        assert (change["requestedBy"], change["changeRecord"]) == ("alice", "CHG-11001")
        if live == "configmap":  # the Deployment has moved on since (break-glass)
            assert change["toDigest"] == gate.live_digest(live, change["name"], ns)
    assert [e["approval"] for e in report["expiredUnused"]] == [f"{ns}/{expired}"]
    assert report["expiredUnused"][0]["approvers"] == [{"name": "bob", "senior": False}]
    assert report["counts"] == {ns: {"changes": 3, "approval": 2, "break-glass": 1,
                                     "exempt": 0, "unexplained": 0, "aiAssisted": 2,
                                     "reviewsOwed": 1, "reviewsOverdue": 0,
                                     "expiredUnused": 1}}

    table = gate.changegate("admin", "audit", "-n", ns)
    assert table.rc == 0 and "bob, dana*" in table.out, table.text
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "audit-e2e.txt").write_text(table.out)  # the README shows one like it
    page = ARTIFACTS / "audit-e2e.html"
    html = gate.changegate("admin", "audit", "-n", ns, "-o", "html", "--out", str(page))
    assert html.rc == 0, html.text
    shown = render(page, ARTIFACTS / "audit-e2e.png")
    assert shown.console == [], shown.console
    # one day, two ways in: approval and break-glass
    assert "Tier-1 changes" in shown.dom and shown.dom.count("<rect") == 2
    assert "dana (senior)" in shown.dom
