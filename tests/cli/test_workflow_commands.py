"""preflight, list, status, restarts, prunes, server-side apply and offline signing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from changegate.core.digest import digest
from tests.cli.conftest import NS, run_cli

DEP = "chg-1234-deployment-checkout"
CM = "chg-1234-configmap-checkout-config"


def approve_all(cg, keys, record="CHG-1234"):
    for who in ("bob", "carol"):
        result = cg(who, "approve", "--record", record, "--key", keys[who], "--yes")
        assert result.code == 0, result.err


def test_preflight_denies_until_approved_then_admits(kube, cg, manifests, keys):
    before = cg("alice", "preflight", "-f", str(manifests))
    assert before.code == 1, before.out + before.err
    assert "DENY" in before.out and "changegate: would DENY" in before.out
    assert "0 admitted, 2 denied" in before.out
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234").code == 0
    by_record = cg("alice", "preflight", "--record", "CHG-1234")
    # requested, nobody signed yet: the webhook names the approval and counts 0/2
    assert by_record.code == 1 and "approvals_insufficient: 0/2 approvals" in by_record.out
    approve_all(cg, keys)
    after = cg("alice", "preflight", "-f", str(manifests))
    assert after.code == 0, after.out
    assert "2 admitted, 0 denied" in after.out
    assert cg("alice", "preflight", "--record", "CHG-1234").code == 0
    # The fake stores nothing for a dry-run: preflight never changes the cluster.
    assert kube.get("deployments", NS, "checkout")["spec"]["template"]["spec"][
        "containers"][0]["image"].endswith("1.41.0")


def test_list_shows_a_kubectl_like_table_and_filters(kube, cg, manifests, keys):
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234").code == 0
    assert cg("bob", "approve", DEP, "--key", keys["bob"], "--yes").code == 0
    out = cg("bob", "list").out.splitlines()
    assert out[0].split() == ["NAME", "TARGET", "OP", "RECORD", "APPROVALS", "PHASE",
                              "EXPIRES", "AGE"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows[DEP][1:5] == ["deployment/checkout", "UPDATE", "CHG-1234", "1?/2"]
    assert rows[CM][4] == "0?/2" and rows[CM][6] == "in"
    everywhere = cg("bob", "list", "-A", "--pending").out.splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE" and len(everywhere) == 3
    assert cg("bob", "list", "--record", "CHG-9").err.startswith("No ChangeApprovals")
    as_json = json.loads(cg("bob", "list", "-o", "json").out)
    assert [i["metadata"]["name"] for i in as_json["items"]] == [CM, DEP]
    assert yaml.safe_load(cg("bob", "list", "-o", "yaml").out)["kind"] == "List"


def test_list_pending_leaves_out_expired_and_used_approvals(kube, cg, manifests):
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234",
              "--expires", "1h").code == 0
    ca = kube.get("changeapprovals", NS, CM)
    ca["status"] = {"phase": "Applied"}
    kube.store[("changeapprovals", NS, CM)] = ca
    pending = cg("bob", "list", "--pending").out
    assert DEP in pending and CM not in pending


def test_status_explains_what_is_missing(kube, cg, manifests, keys):
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234").code == 0
    assert cg("bob", "approve", DEP, "--key", keys["bob"], "--yes").code == 0
    out = cg("dana", "status", DEP).out
    assert "Approvals:     1/2 (bob; verified with the trust store)" in out
    assert "needs 1 more from approvers other than alice" in out
    # Without the trust store, status says what it judged by.
    kube.forbid("*", "/api/v1/namespaces/changegate/configmaps/changegate-trust")
    blind = cg("dana", "status", DEP).out
    assert "per status" in blind and "0/2" in blind
    live = kube.get("deployments", NS, "checkout")
    live["spec"]["replicas"] = 7
    kube.put(live)
    drift = cg("dana", "status", DEP).out
    assert "changed since the request" in drift
    assert json.loads(cg("dana", "status", DEP, "-o", "json").out)["metadata"]["name"] == DEP


def test_restart_requests_the_live_object_with_a_fixed_time_and_apply_runs_it(
        kube, cg, keys):
    kube.now = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    result = cg("alice", "request", "--restart", "deployment/checkout", "--record", "CHG-77")
    assert result.code == 0, result.err
    ca = kube.get("changeapprovals", NS, "chg-77-deployment-checkout")
    template = ca["spec"]["manifest"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/restartedAt": "2026-11-23T09:30:00Z"}
    approve_all(cg, keys, "CHG-77")
    applied = cg("alice", "apply", "chg-77-deployment-checkout")
    assert applied.code == 0, applied.err
    assert digest(kube.get("deployments", NS, "checkout")) == ca["spec"]["toDigest"]


def test_prune_requests_deletes_and_apply_deletes_exactly_that_object(
        kube, cg, keys, tmp_path):
    only_deployment = tmp_path / "app.yaml"
    from tests.cli.conftest import release

    only_deployment.write_text(yaml.safe_dump(release()[0]))
    result = cg("alice", "request", "-f", str(only_deployment), "--record", "CHG-5",
                "--prune", "-l", "app=checkout")
    assert result.code == 0, result.err
    row = next(line.split() for line in result.out.splitlines() if "configmap/" in line)
    assert row[1:3] == ["DELETE", "configmap/checkout-config"]
    ca = kube.get("changeapprovals", NS, "chg-5-configmap-checkout-config")
    assert ca["spec"]["operation"] == "DELETE" and ca["spec"]["toDigest"] == "none"
    assert "manifest" not in ca["spec"]
    approve_all(cg, keys, "CHG-5")
    gone = cg("alice", "apply", "chg-5-configmap-checkout-config")
    assert gone.code == 0, gone.err
    assert "deleted" in gone.out
    assert kube.get("configmaps", NS, "checkout-config") is None


def test_prune_needs_a_selector(cg, manifests):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-5", "--prune")
    assert result.code == 2 and "--prune needs -l/--selector" in result.err


def test_create_of_a_new_object(kube, cg, keys, tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fresh}\n"
                    "data: {a: '1'}\n")
    assert cg("alice", "request", "-f", str(path), "--record", "CHG-8").code == 0
    ca = kube.get("changeapprovals", NS, "chg-8-configmap-fresh")
    assert (ca["spec"]["operation"], ca["spec"]["fromDigest"], ca["spec"]["target"]["uid"]) \
        == ("CREATE", "none", "none")
    approve_all(cg, keys, "CHG-8")
    assert cg("alice", "apply", "chg-8-configmap-fresh").code == 0
    assert kube.get("configmaps", NS, "fresh")["data"] == {"a": "1"}


def test_server_side_request_sends_an_apply_patch_with_the_field_manager(kube, cg, manifests):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-6",
                "--server-side", "--field-manager", "argocd-controller", "--force-conflicts")
    assert result.code == 0, result.err
    applies = [p for (_, m, p) in kube.requests if m == "PATCH" and "dryRun=All" in p]
    assert applies and all("fieldManager=argocd-controller" in p and "force=true" in p
                           for p in applies)
    ca = kube.get("changeapprovals", NS, "chg-6-deployment-checkout")
    assert ca["metadata"]["annotations"]["changegate.io/write"] == "server-side-apply"


def test_as_returned_takes_the_files_as_the_dry_run_result(kube, cg, tmp_path):
    live = kube.get("configmaps", NS, "checkout-config")
    live["data"]["PAYMENT_TIMEOUT_MS"] = "300"
    path = tmp_path / "returned.json"
    path.write_text(json.dumps(live))
    assert cg("alice", "request", "-f", str(path), "--record", "CHG-4", "--as-returned").code == 0
    assert not [r for r in kube.requests if "dryRun" in r[2]]
    ca = kube.get("changeapprovals", NS, "chg-4-configmap-checkout-config")
    assert ca["spec"]["toDigest"] == digest(live)


def test_a_name_collision_gets_a_suffix(kube, cg, manifests):
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234").code == 0
    again = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234")
    assert again.code == 0
    names = sorted(n for (p, _, n) in kube.store if p == "changeapprovals")
    assert len(names) == 4 and any(n.startswith(DEP + "-") for n in names)


def test_approve_a_file_offline_and_check_its_manifest(kube, cg, manifests, keys, tmp_path):
    assert cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234").code == 0
    path = tmp_path / "ca.yaml"
    path.write_text(yaml.safe_dump(kube.get("changeapprovals", NS, DEP)))
    signed = run_cli(["approve", "-f", str(path), "--key", keys["bob"], "--yes"])
    assert signed.code == 0, signed.err
    assert len(yaml.safe_load(path.read_text())["spec"]["signatures"]) == 1
    # A manifest edited after the request no longer has its toDigest: refused.
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["manifest"]["spec"]["replicas"] = 30
    path.write_text(yaml.safe_dump(doc))
    refused = run_cli(["approve", "-f", str(path), "--key", keys["carol"], "--yes"])
    assert refused.code != 0 and "refusing to sign" in refused.err
    assert len(yaml.safe_load(path.read_text())["spec"]["signatures"]) == 1


def test_kubectl_is_run_with_the_same_kubeconfig_and_context(kube, manifests, tmp_path):
    """The file's current context points at nothing; --context picks the fake API server,
    for changegate's own calls and for the kubectl it runs to compute client-side apply."""
    path = tmp_path / "two-contexts.kubeconfig"
    config = yaml.safe_load(Path(kube.kubeconfig("alice", NS)).read_text())
    config["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}})
    config["contexts"].append({"name": "nowhere", "context": {"cluster": "nowhere",
                                                               "user": "alice"}})
    config["current-context"] = "nowhere"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(["request", "-f", str(manifests), "--record", "CHG-77",
                      "--kubeconfig", str(path), "--context", "alice"])
    assert result.code == 0, result.err
    dry_runs = [r for r in kube.requests if r[1] in ("PATCH", "POST") and "dryRun=All" in r[2]
                and "fieldManager=kubectl-client-side-apply" in r[2]]
    assert {r[0] for r in dry_runs} == {"alice"} and len(dry_runs) == 2, kube.requests
