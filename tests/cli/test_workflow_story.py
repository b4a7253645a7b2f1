"""The workflow as people run it: alice requests, bob and carol approve, the change goes in.

The fake API server admits writes with the real decision core, so "the webhook would
allow it" here is the webhook's own judgement, not the CLI's.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from changegate.core.digest import digest
from changegate.core.statement import parse_statement
from tests.cli.conftest import NS, cg_process, run_cli

DEP = "chg-1234-deployment-checkout"
CM = "chg-1234-configmap-checkout-config"
CA_PATH = f"/apis/changegate.io/v1alpha1/namespaces/{NS}/changeapprovals"


def request(cg, manifests, *extra):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234",
                "--url", "https://itsm.example/CHG-1234", *extra)
    assert result.code == 0, result.out + result.err
    return result


def approved_by_bob_and_carol(cg, keys):
    for who in ("bob", "carol"):
        assert cg(who, "approve", DEP, "--key", keys[who], "--yes").code == 0


def test_request_creates_one_approval_per_changed_object_with_the_dry_run_result(
        kube, cg, manifests):
    kube.now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    result = request(cg, manifests, "--expires", "4h")
    assert f"changeapproval/{DEP}" in result.out and f"changeapproval/{CM}" in result.out
    assert "changegate approve --record CHG-1234 -n payments" in result.out
    ca = kube.get("changeapprovals", NS, DEP)
    spec = ca["spec"]
    live = kube.get("deployments", NS, "checkout")
    # The manifest is what the API server would store: the fake's defaults are in it.
    assert spec["manifest"]["spec"]["revisionHistoryLimit"] == 10
    assert spec["manifest"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        "1.42.0")
    assert spec["fromDigest"] == digest(live) and spec["toDigest"] == digest(spec["manifest"])
    assert spec["target"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                              "uid": live["metadata"]["uid"]}
    statement = parse_statement(base64.b64decode(spec["statement"]))
    p = statement.predicate
    # issuedAt is the API server's clock (its Date header), not this machine's.
    assert (p.issuedAt, p.expiresAt) == ("2026-11-23T08:00:00Z", "2026-11-23T12:00:00Z")
    assert (p.requestedBy, p.cluster, p.changeRecord.id) == ("alice", "prod-eu-1", "CHG-1234")
    assert spec["signatures"] == []
    # Nothing was written to the objects themselves.
    assert live["spec"]["template"]["spec"]["containers"][0]["image"].endswith("1.41.0")


def test_unchanged_and_ungated_documents_are_skipped(kube, cg, tmp_path):
    from tests.cli.conftest import CONFIGMAP, release

    docs = [release()[0], CONFIGMAP,
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout"}}]
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = cg("alice", "request", "-f", str(path), "--record", "CHG-7")
    assert result.code == 0, result.err
    assert "unchanged: configmap/checkout-config" in result.out
    assert "not gated: service/checkout" in result.out
    assert [n for (p, _, n) in kube.store if p == "changeapprovals"] == [
        "chg-7-deployment-checkout"]


def test_the_whole_story_request_approve_check_apply(kube, cg, manifests, keys, tmp_path):
    request(cg, manifests)
    # alice cannot approve her own request: refused before anything is signed.
    own = cg("alice", "approve", "--record", "CHG-1234", "--key", keys["alice"], "--yes")
    assert own.code != 0 and "you (alice) requested this change" in own.err
    assert kube.get("changeapprovals", NS, DEP)["spec"]["signatures"] == []
    # Applying now is refused with the reason.
    early = cg("alice", "apply", DEP)
    assert early.code != 0 and "approvals 0/2" in early.err
    for approver in ("bob", "carol"):
        signed = cg(approver, "approve", "--record", "CHG-1234", "--key", keys[approver],
                    "--yes")
        assert signed.code == 0, signed.err
        assert f"signed changeapproval/{DEP}" in signed.out
        assert "+        image: registry.example/checkout:1.42.0" in signed.out  # the diff
    for name in (DEP, CM):
        assert len(kube.get("changeapprovals", NS, name)["spec"]["signatures"]) == 2

    # The offline decision (`changegate check`, the webhook's own code) on the result.
    ca = kube.get("changeapprovals", NS, DEP)
    live = kube.get("deployments", NS, "checkout")
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "0b1e", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "namespace": NS, "name": "checkout", "operation": "UPDATE",
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": ca["spec"]["manifest"], "oldObject": live, "dryRun": False}}
    (tmp_path / "review.json").write_text(json.dumps(review))
    (tmp_path / "trust.yaml").write_text(kube.trust_text)
    (tmp_path / "policy.yaml").write_text(kube.policy_text)
    cas = [kube.get("changeapprovals", NS, n) for n in (DEP, CM)]
    (tmp_path / "approvals.yaml").write_text(yaml.safe_dump_all(cas))
    now = kube.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    check = run_cli(["check", "--review", str(tmp_path / "review.json"), "--trust",
                     str(tmp_path / "trust.yaml"), "--policy", str(tmp_path / "policy.yaml"),
                     "--approval", str(tmp_path / "approvals.yaml"), "--now", now])
    assert check.code == 0, check.out + check.err
    assert "ALLOWED" in check.out

    ready = cg("dana", "status", DEP)
    assert ready.code == 0 and "Ready: run `changegate apply" in ready.out
    assert "Approvals:     2/2 (bob, carol; verified" in ready.out
    # alice applies: the fake admits the write with the real decision core.
    applied = cg("alice", "apply", DEP)
    assert applied.code == 0, applied.err
    assert "configured" in applied.out and "approved by bob, carol" in applied.out
    live = kube.get("deployments", NS, "checkout")
    assert digest(live) == ca["spec"]["toDigest"]
    assert cg("alice", "apply", CM).code == 0
    assert kube.get("configmaps", NS, "checkout-config")["data"]["PAYMENT_TIMEOUT_MS"] == "250"


def test_approving_a_stale_manifest_is_refused(kube, cg, manifests, keys):
    request(cg, manifests)
    live = kube.get("deployments", NS, "checkout")
    live["spec"]["replicas"] = 5  # someone changed the live object after the request
    kube.put(live)
    result = cg("bob", "approve", DEP, "--key", keys["bob"], "--yes")
    assert result.code != 0
    assert "changed since the request" in result.err and "nothing was signed" in result.err
    assert kube.get("changeapprovals", NS, DEP)["spec"]["signatures"] == []


def test_two_approvers_signing_at_once_both_land(kube, manifests, keys, cg):
    request(cg, manifests)
    # Each approver's second read of the object (the one before its write) waits for the
    # other's: both read the same resourceVersion, and one write must fail and retry.
    kube.hold(f"{CA_PATH}/{DEP}", {"bob", "carol"}, nth=2)
    procs = [cg_process(kube, who, "approve", DEP, "-n", NS, "--key", keys[who], "--yes")
             for who in ("bob", "carol")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(kube.get("changeapprovals", NS, DEP)["spec"]["signatures"]) == 2
    patches = [r for r in kube.requests if r[1] == "PATCH" and r[2].startswith(f"{CA_PATH}/")]
    assert len(patches) == 3  # one of the two was refused as stale and sent again
    assert any("after 1 concurrent update" in out for out, _ in outs)


def test_apply_refuses_an_expired_approval(kube, cg, manifests, keys):
    request(cg, manifests, "--expires", "1h")
    approved_by_bob_and_carol(cg, keys)
    kube.now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    result = cg("alice", "apply", DEP)
    assert result.code != 0 and "expired at" in result.err


def test_apply_refuses_when_the_live_object_moved(kube, cg, manifests, keys):
    request(cg, manifests)
    approved_by_bob_and_carol(cg, keys)
    live = kube.get("configmaps", NS, "checkout-config")
    kube.put(live)  # same content: not a move
    dep = kube.get("deployments", NS, "checkout")
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/checkout:9"
    kube.put(dep)
    result = cg("alice", "apply", DEP)
    assert result.code != 0 and "changed since the request" in result.err


def test_an_approver_cannot_apply_what_they_approved(kube, cg, manifests, keys):
    request(cg, manifests)
    approved_by_bob_and_carol(cg, keys)
    result = cg("bob", "apply", DEP)
    assert result.code != 0 and "someone else must apply it" in result.err


@pytest.mark.parametrize("answer, signed", [("n\n", 0), ("y\n", 1)])
def test_approve_asks_before_signing(kube, cg, manifests, keys, answer, signed):
    request(cg, manifests)
    result = cg("bob", "approve", DEP, "--key", keys["bob"], input=answer)
    assert "Sign 1 ChangeApproval(s) as bob" in result.err
    assert (result.code == 0) == bool(signed)
    assert len(kube.get("changeapprovals", NS, DEP)["spec"]["signatures"]) == signed
