"""`changegate check`, `verify` and `keygen` as a person runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from tests.support import FIXTURES, approval_for, fixture, sign, trust_yaml


def cg(*args, env=None):
    return subprocess.run([sys.executable, "-m", "changegate", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "trust.yaml").write_text(trust_yaml())
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    (tmp_path / "approval.yaml").write_text(yaml.safe_dump(approval))
    return tmp_path


NOW = ["--now", "2026-11-23T10:00:00Z"]


def test_check_denies_an_unapproved_change_with_exit_1(files):
    result = cg("check", "--review", str(FIXTURES / "deployment-update.json"),
                "--trust", str(files / "trust.yaml"), *NOW)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith("changegate: op=UPDATE")


def test_check_allows_an_approved_change_with_exit_0(files):
    result = cg("check", "--review", str(FIXTURES / "deployment-update.json"),
                "--trust", str(files / "trust.yaml"), "--approval", str(files / "approval.yaml"),
                *NOW, "--output", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["allowed"] and out["reason"] == "approved" and out["approvers"] == ["bob", "carol"]
    assert out["response"]["response"]["uid"] == fixture("deployment-update")["request"]["uid"]


def test_check_dry_run_exits_0(files):
    result = cg("check", "--review", str(FIXTURES / "deployment-update-dryrun.json"),
                "--trust", str(files / "trust.yaml"), *NOW)
    assert result.returncode == 0 and "would DENY" in result.stdout


def test_check_reads_a_list_of_approvals_and_a_namespace(files):
    review = fixture("deployment-update")
    approval = sign(approval_for(review), "bob", "carol")
    (files / "list.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                 "items": [approval]}))
    (files / "ns.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "payments", "labels": {"tier": "tier-1"},
            "annotations": {"changegate.io/required-approvals": "3"}}}))
    result = cg("check", "--review", str(FIXTURES / "deployment-update.json"), "--trust",
                str(files / "trust.yaml"), "--approval", str(files / "list.json"),
                "--namespace", str(files / "ns.yaml"), *NOW)
    assert result.returncode == 1 and "approvals=2/3" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["--trust", "missing.yaml"], "no such file"),
    (["--trust", "bad.yaml"], "trust store"),
    (["--trust", "trust.yaml", "--policy", "badpolicy.yaml"], "unknown setting"),
    (["--trust", "trust.yaml", "--approval", "broken.yaml"], "not valid YAML"),
    (["--trust", "trust.yaml", "--now", "yesterday"], "RFC 3339"),
])
def test_bad_input_is_one_line_and_exit_2(files, args, needle):
    (files / "bad.yaml").write_text("approvers: [{name: bob, keys: [nope]}]")
    (files / "badpolicy.yaml").write_text("requiredAprovals: 1")
    (files / "broken.yaml").write_text("a: [")
    os.chdir(files)
    result = cg("check", "--review", str(FIXTURES / "deployment-update.json"), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_malformed_review_is_exit_2(files):
    (files / "review.json").write_text('{"apiVersion": "v1"}')
    result = cg("check", "--review", str(files / "review.json"), "--trust",
                str(files / "trust.yaml"))
    assert result.returncode == 2 and "AdmissionReview" in result.stderr


def test_verify_explains_each_signature(files):
    result = cg("verify", "-f", str(files / "approval.yaml"), "--trust", str(files / "trust.yaml"))
    assert result.returncode == 0, result.stdout
    assert "signatures[0]: valid" in result.stdout and "approvers: bob, carol" in result.stdout


def test_verify_flags_an_untrusted_signature(files):
    from changegate.core.compose import signed
    from changegate.core.dsse import generate
    approval = yaml.safe_load((files / "approval.yaml").read_text())
    (files / "bad.yaml").write_text(yaml.safe_dump(signed(approval, generate())))
    result = cg("verify", "-f", str(files / "bad.yaml"), "--trust", str(files / "trust.yaml"))
    assert result.returncode == 1 and "signatures[2]: untrusted" in result.stdout


def test_keygen_writes_a_0600_key_and_a_loadable_trust_entry(tmp_path):
    out = tmp_path / "k" / "bob.key"
    result = cg("keygen", "--name", "bob", "--out", str(out), "--namespace", "payments")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    from changegate.core.dsse import load_private_key
    from changegate.core.trust import load_trust_store
    store = load_trust_store(result.stdout)
    key = load_private_key(out.read_bytes())
    assert store.by_keyid(key.public.keyid).approver.namespaces == ("payments",)
    again = cg("keygen", "--name", "bob", "--out", str(out))
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_keygen_with_passphrase_and_wrong_passphrase_is_one_line(tmp_path):
    out = tmp_path / "bob.key"
    assert cg("keygen", "--name", "bob", "--out", str(out), "--passphrase-env", "PW",
              env={"PW": "s3cret"}).returncode == 0
    from changegate.core.dsse import load_private_key
    from changegate.core.errors import KeyFileError
    assert load_private_key(out.read_bytes(), b"s3cret")
    with pytest.raises(KeyFileError):
        load_private_key(out.read_bytes(), b"wrong")
    with pytest.raises(KeyFileError, match="passphrase"):
        load_private_key(out.read_bytes())


def test_openssh_ed25519_keys_sign(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from changegate.core.dsse import load_private_key
    raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())
    key = load_private_key(raw)
    assert key.public.algorithm == "ed25519"


def test_unknown_key_type_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from changegate.core.dsse import load_private_key
    from changegate.core.errors import KeyFileError
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="not accepted"):
        load_private_key(pem)


def test_every_command_has_help():
    import click

    from changegate.cli.main import COMMANDS, cli
    for name in ("check", "verify", "keygen"):
        assert cg(name, "--help").returncode == 0
    # Every SPEC §10 command is a real command (no placeholder), loaded from its module.
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.help, name
    assert {"keygen", "whoami", "request", "approve", "apply", "preflight", "list", "status",
            "verify", "check", "audit", "break-glass", "canary", "onboard", "emergency-off",
            "emergency-on", "serve", "operator", "demo"} <= set(COMMANDS)


def test_check_decides_the_senior_rule_offline(files):
    """SPEC §6a through `check`: an ai change by two non-seniors is denied, a senior admits."""
    entries = yaml.safe_load(trust_yaml())["approvers"]
    for entry in entries:
        entry["senior"] = entry["name"] == "erin"
    (files / "trust.yaml").write_text(yaml.safe_dump({"approvers": entries}))
    review = fixture("deployment-update")
    args = ["check", "--review", str(FIXTURES / "deployment-update.json"), "--trust",
            str(files / "trust.yaml"), *NOW, "--output", "json"]
    (files / "ai.yaml").write_text(yaml.safe_dump(sign(approval_for(review, assistance="ai"),
                                                       "bob", "carol")))
    denied = cg(*args, "--approval", str(files / "ai.yaml"))
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert json.loads(denied.stdout)["reason"] == "senior_approval_required"
    (files / "ai.yaml").write_text(yaml.safe_dump(sign(approval_for(review, assistance="ai"),
                                                       "bob", "erin")))
    assert cg(*args, "--approval", str(files / "ai.yaml")).returncode == 0


# --- issue 18, shown offline with `check` as a person runs it ------------------------------

def _check(files, review, *extra):
    (files / "review.json").write_text(json.dumps(review))
    return cg("check", "--review", str(files / "review.json"), "--trust",
              str(files / "trust.yaml"), *extra, *NOW)


def test_check_rule1_a_junk_signature_spoils_nothing(files):
    from changegate.core.compose import signed
    from changegate.core.dsse import generate
    review = fixture("deployment-update")
    approval = signed(sign(approval_for(review), "bob"), generate(), generate())
    (files / "junk.yaml").write_text(yaml.safe_dump(sign(approval, "carol")))
    result = _check(files, review, "--approval", str(files / "junk.yaml"))
    assert result.returncode == 0 and "approved" in result.stdout, result.stdout
    (files / "ca.json").write_text(json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u", "kind": {"group": "changegate.io", "version": "v1alpha1",
                                 "kind": "ChangeApproval"},
            "resource": {"group": "changegate.io", "version": "v1alpha1",
                         "resource": "changeapprovals"},
            "name": "chg-1234", "namespace": "payments", "operation": "CREATE",
            "userInfo": {"username": "alice"}, "object": approval}}))
    door = cg("check", "--review", str(files / "ca.json"), "--trust", str(files / "trust.yaml"),
              *NOW)
    assert door.returncode == 1 and "key_untrusted" in door.stdout, door.stdout


@pytest.mark.parametrize("value", ["²", "1" * 5000])
def test_check_spec6_an_unreadable_required_approvals_warns_and_never_tracebacks(files, value):
    (files / "ns.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "payments", "labels": {"tier": "tier-1"},
            "annotations": {"changegate.io/required-approvals": value}}}))
    result = _check(files, fixture("deployment-update"), "--approval",
                    str(files / "approval.yaml"), "--namespace", str(files / "ns.yaml"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "required-approvals" in result.stdout and "ignored" in result.stdout


def test_check_spec5_break_glass_fixes_an_object_that_cannot_be_digested(files):
    review = fixture("deployment-break-glass")
    review["request"]["oldObject"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] = 2 ** 60
    (files / "policy.yaml").write_text("breakGlassGroups: [sre-oncall]\n")
    result = _check(files, review, "--policy", str(files / "policy.yaml"))
    assert result.returncode == 0 and "break_glass" in result.stdout, result.stdout


def test_check_a_restart_beside_a_used_approval_names_the_restart_path(files):
    review = fixture("deployment-rollout-restart")
    earlier = fixture("deployment-rollout-restart")
    earlier["request"]["object"]["spec"]["replicas"] = 5
    used = sign(approval_for(earlier), "bob", "carol")
    used["status"] = {"phase": "Applied"}
    (files / "used.yaml").write_text(yaml.safe_dump(used))
    result = _check(files, review, "--approval", str(files / "used.yaml"))
    assert result.returncode == 1 and "restart_unapproved" in result.stdout, result.stdout
    assert "changegate request --restart" in result.stdout
    assert "approval_used" not in result.stdout
