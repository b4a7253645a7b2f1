"""Every failure is one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket

import pytest

from changegate.core.dsse import generate
from tests.cli.conftest import NS, cg_process, run_cli

DEP = "chg-1234-deployment-checkout"


def one_line(result, *needles):
    assert result.code != 0, result.out
    assert len(result.lines) == 1, result.err
    assert result.lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    for needle in needles:
        assert needle in result.lines[0], result.lines[0]


@pytest.fixture
def requested(kube, cg, manifests):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234")
    assert result.code == 0, result.err


def test_no_kubeconfig(tmp_path, manifests):
    result = run_cli(["request", "-f", str(manifests), "--record", "CHG-1"],
                     env={"KUBECONFIG": None, "HOME": str(tmp_path),
                          "KUBERNETES_SERVICE_HOST": None})
    one_line(result, "no kubeconfig")


def test_kubeconfig_that_does_not_exist(tmp_path):
    result = run_cli(["list", "--kubeconfig", str(tmp_path / "nope")])
    one_line(result, "nope")


def test_forbidden(kube, cg, manifests):
    kube.forbid("alice", f"/apis/changegate.io/v1alpha1/namespaces/{NS}/changeapprovals",
                method="POST")
    one_line(cg("alice", "request", "-f", str(manifests), "--record", "CHG-1"),
             "forbidden", "alice")
    # Nothing half-done: no approval exists.
    assert not [k for k in kube.store if k[0] == "changeapprovals"]


def test_hpas_that_cannot_be_read_stop_the_request_instead_of_a_wrong_digest(kube, cg,
                                                                             manifests):
    # Guessing "not autoscaled" would sign replicas the webhook leaves out of the digest.
    kube.forbid("alice", f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers")
    one_line(cg("alice", "request", "-f", str(manifests), "--record", "CHG-1"),
             "cannot list HorizontalPodAutoscalers", "(403)")
    assert not [k for k in kube.store if k[0] == "changeapprovals"]


def test_not_found(cg):
    one_line(cg("bob", "status", "nope"), "ChangeApproval payments/nope not found")
    one_line(cg("bob", "apply", "nope"), "not found")


def test_unauthorized(kube, manifests):
    path = kube.workdir / "anon.kubeconfig"
    source = kube.workdir / "x.kubeconfig"
    kube.kubeconfig("x")
    path.write_text(source.read_text().replace("token: x", "token: ''"))
    one_line(run_cli(["list", "--kubeconfig", str(path)]), "Unauthorized")


def test_kubectl_missing(kube, cg, manifests, tmp_path, monkeypatch):
    """Client-side apply is kubectl's to compute: without it, one line says so; the server-side
    path, all Python, still works."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    one_line(cg("alice", "request", "-f", str(manifests), "--record", "CHG-1"),
             "kubectl not found on PATH")
    assert not [r for r in kube.requests if "changeapprovals" in r[2] and r[1] == "POST"]
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1", "--server-side")
    assert result.code == 0, result.err


def test_key_file_that_is_no_key(cg, requested, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    one_line(cg("bob", "approve", DEP, "--key", str(bad), "--yes"), "bad.key",
             "not a private key")


def test_missing_key_file(cg, requested, tmp_path):
    one_line(cg("bob", "approve", DEP, "--key", str(tmp_path / "none.key"), "--yes"),
             "no such key file")


def test_key_not_in_the_trust_store_is_refused_before_signing(kube, cg, requested, keys):
    one_line(cg("bob", "approve", DEP, "--key", keys["mallory"], "--yes"),
             "not in the trust store", "nothing was signed")
    assert kube.get("changeapprovals", NS, DEP)["spec"]["signatures"] == []


def test_someone_elses_requester_key_cannot_approve(kube, cg, requested, keys):
    one_line(cg("bob", "approve", DEP, "--key", keys["alice"], "--yes"),
             "belongs to alice, who requested this change")


def test_wrong_passphrase(cg, requested, tmp_path):
    path = tmp_path / "locked.key"
    path.write_bytes(generate().pem(b"right horse battery"))
    one_line(cg("bob", "approve", DEP, "--key", str(path), "--yes",
                env={"CHANGEGATE_KEY_PASSPHRASE": "wrong"}), "wrong passphrase")


def test_encrypted_key_without_a_passphrase_off_a_terminal(cg, requested, tmp_path):
    path = tmp_path / "locked.key"
    path.write_bytes(generate().pem(b"right horse battery"))
    one_line(cg("bob", "approve", DEP, "--key", str(path), "--yes",
                env={"CHANGEGATE_KEY_PASSPHRASE": None}), "CHANGEGATE_KEY_PASSPHRASE")


def test_encrypted_key_with_the_right_passphrase_signs(kube, cg, requested, tmp_path):
    from tests.support import key

    path = tmp_path / "bob-locked.key"
    path.write_bytes(key("bob").pem(b"right horse battery"))
    result = cg("bob", "approve", DEP, "--key", str(path), "--yes",
                env={"CHANGEGATE_KEY_PASSPHRASE": "right horse battery"})
    assert result.code == 0, result.err
    assert len(kube.get("changeapprovals", NS, DEP)["spec"]["signatures"]) == 1


def test_connection_refused(tmp_path, manifests):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    path = tmp_path / "down.kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    one_line(run_cli(["request", "-f", str(manifests), "--record", "CHG-1", "--kubeconfig",
                      str(path)]), "cannot reach the API server", "connection refused")


def test_expires_beyond_the_cluster_maximum(cg, manifests):
    one_line(cg("alice", "request", "-f", str(manifests), "--record", "CHG-1",
                "--expires", "48h"), "maxApprovalLifetime")


def test_namespace_contradiction(cg, tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: other}\n"
                    "data: {x: '1'}\n")
    one_line(cg("alice", "request", "-f", str(path), "--record", "CHG-1", "-n", NS),
             "does not match -n payments")


def test_usage_errors_exit_2_without_traceback(cg):
    result = cg("bob", "approve")
    assert result.code == 2 and "give one of NAME, --record ID or -f FILE" in result.err
    assert "Traceback" not in result.err


def test_a_real_process_prints_one_line_for_a_webhook_denial(kube, manifests):
    # `apply` of an approval with no signatures, by a separate process: one line, exit != 0.
    requested = cg_process(kube, "alice", "request", "-f", str(manifests), "--record", "CHG-9")
    requested.communicate(timeout=60)
    assert requested.returncode == 0
    proc = cg_process(kube, "alice", "apply", "chg-9-deployment-checkout")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "approvals 0/2" in err
