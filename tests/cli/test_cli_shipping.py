"""What ships with the CLI: shell completion (click's scripts, kubectl's plugin protocol through
a real kubectl), -o json, KUBECONFIG lists merged as kubectl merges them, apply --wait,
status --watch and progress on a terminal."""

from __future__ import annotations

import base64
import itertools
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from changegate.cli.completion import cobra_answer
from tests.cli.conftest import NS, cg_process, release, run_cli
from tests.cluster import GoMissing, ensure_binaries
from tests.support import FIXTURES, approval_for, fixture, sign, trust_yaml

DEP = "chg-1234-deployment-checkout"


@pytest.fixture(scope="module")
def kubectl_bin() -> str:
    """The e2e control plane's kubectl (a real one, >= 1.26 for plugin completion)."""
    try:
        return str(ensure_binaries() / "kubectl")
    except GoMissing:
        pytest.skip("no kubectl: the control-plane binaries are not built")


def wrappers(tmp_path: Path) -> Path:
    """`changegate`, `kubectl-changegate` and `kubectl_complete-changegate` on a PATH, running
    this checkout's code (what the console scripts of a wheel run)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mains = {"changegate": "from changegate.cli.main import main; main()",
             "kubectl-changegate": "from changegate.cli.main import main; main()",
             "kubectl_complete-changegate":
                 "from changegate.cli.completion import kubectl_complete; kubectl_complete()"}
    for name, code in mains.items():
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n{code}\n")
        script.chmod(0o755)
    return bin_dir


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **extra}


# -- completion ------------------------------------------------------------------------------

@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "complete -o nosort -F _changegate_completion changegate"),
    ("zsh", "#compdef changegate"),
    ("fish", "complete --no-files --command changegate"),
])
def test_completion_prints_clicks_script(shell, marker):
    result = run_cli(["completion", shell])
    assert result.code == 0, result.err
    assert marker in result.out and "_CHANGEGATE_COMPLETE" in result.out


def test_bash_completion_completes_commands_and_options(tmp_path):
    """The printed script, sourced in a real bash, completes through the real program."""
    bin_dir = wrappers(tmp_path)
    script = ('source <(changegate completion bash); COMP_WORDS=(changegate {words}); '
              'COMP_CWORD={cword}; _changegate_completion changegate; '
              'printf "%s\\n" "${{COMPREPLY[@]}}"')

    def complete(*words: str) -> list[str]:
        done = subprocess.run(["bash", "-c", script.format(words=" ".join(words),
                                                             cword=len(words))],
                              capture_output=True, text=True, env=env_with(bin_dir),
                              timeout=60, check=True)
        return done.stdout.split()

    assert complete("st") == ["status"]
    assert {"--wait", "--timeout", "--dry-run"} <= set(complete("apply", "--"))
    assert complete("completion", "") == ["bash", "zsh", "fish"]


def test_cobra_answer_lists_commands_with_help_and_a_directive():
    lines = cobra_answer(["pre"]).splitlines()
    assert lines == ["preflight\tExit 1 unless every change would be admitted now.", ":4"]
    assert cobra_answer(["list", "-o", ""]).splitlines() == ["table", "json", "yaml", ":4"]
    # A file argument: no candidates, directive 0 lets the shell complete file names.
    assert cobra_answer(["check", "--review", ""]) == ":0\n"


def test_kubectl_completes_the_plugin_through_kubectl_complete(tmp_path, kubectl_bin):
    """kubectl's own `__complete` finds kubectl-changegate on PATH and asks
    kubectl_complete-changegate, exactly as a shell's kubectl completion does."""
    bin_dir = wrappers(tmp_path)
    done = subprocess.run([kubectl_bin, "__complete", "changegate", "app"], capture_output=True,
                          text=True, env=env_with(bin_dir), timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "apply\tApply an approved manifest as signed."
    assert "approve\tReview and sign a ChangeApproval." in lines
    assert lines[-1] == ":4"
    options = subprocess.run([kubectl_bin, "__complete", "changegate", "status", "--w"],
                             capture_output=True, text=True, env=env_with(bin_dir), timeout=60,
                             check=True)
    assert options.stdout.splitlines()[0].startswith("--watch\t")


# -- -o json ---------------------------------------------------------------------------------

@pytest.fixture
def signed_files(tmp_path):
    (tmp_path / "trust.yaml").write_text(trust_yaml())
    approval = sign(approval_for(fixture("deployment-update")), "bob", "carol")
    (tmp_path / "approval.yaml").write_text(yaml.safe_dump(approval))
    return tmp_path


def test_check_and_verify_speak_json_with_o(signed_files):
    check = run_cli(["check", "--review", str(FIXTURES / "deployment-update.json"), "--trust",
                     str(signed_files / "trust.yaml"), "--approval",
                     str(signed_files / "approval.yaml"), "--now", "2026-11-23T10:00:00Z",
                     "-o", "json"])
    assert check.code == 0, check.err
    assert json.loads(check.out)["approvers"] == ["bob", "carol"]
    verify = run_cli(["verify", "-f", str(signed_files / "approval.yaml"), "--trust",
                      str(signed_files / "trust.yaml"), "-o", "json"])
    assert verify.code == 0, verify.err
    out = json.loads(verify.out)
    assert out["verified"] is True
    [approval] = out["approvals"]
    assert approval["approvers"] == ["bob", "carol"] and approval["problems"] == []
    assert approval["signatures"] == ["valid", "valid"]
    assert approval["statement"]["operation"] == "UPDATE"


def test_verify_json_reports_a_failure_and_exits_1(signed_files):
    approval = sign(approval_for(fixture("deployment-update")), "bob", "mallory")
    (signed_files / "bad.yaml").write_text(yaml.safe_dump(approval))
    verify = run_cli(["verify", "-f", str(signed_files / "bad.yaml"), "--trust",
                      str(signed_files / "trust.yaml"), "-o", "json"])
    assert verify.code == 1
    out = json.loads(verify.out)
    assert out["verified"] is False and out["approvals"][0]["problems"]


def test_whoami_request_and_preflight_speak_json(kube, cg, manifests):
    who = json.loads(cg("alice", "whoami", "-o", "json").out)
    assert who["kind"] == "SelfSubjectReview"
    assert who["status"]["userInfo"]["username"] == "alice"
    before = cg("alice", "preflight", "-f", str(manifests), "-o", "json")
    assert before.code == 1
    verdicts = json.loads(before.out)
    assert verdicts["admitted"] == 0 and verdicts["denied"] == 2
    assert {r["verdict"] for r in verdicts["results"]} == {"DENY"}
    requested = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234", "-o", "json")
    assert requested.code == 0, requested.err
    out = json.loads(requested.out)  # stdout is the JSON alone
    assert out["record"] == "CHG-1234" and out["requestedBy"] == "alice"
    names = sorted(a["name"] for a in out["approvals"])
    assert names == ["chg-1234-configmap-checkout-config", DEP]
    assert all(a["namespace"] == NS and a["toDigest"].startswith("sha256:")
               for a in out["approvals"])
    # the approvals it names exist
    assert kube.get("changeapprovals", NS, DEP) is not None


# -- KUBECONFIG lists ------------------------------------------------------------------------

def test_kubeconfig_list_is_merged_like_kubectl(kube, tmp_path, kubectl_bin):
    """First file wins per name; current-context from the first file that sets one. kubectl
    itself, given the same list, agrees on the context."""
    first = tmp_path / "first.yaml"
    second = tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bob@fake",
        "contexts": [{"name": "bob@fake",
                      "context": {"cluster": "fake", "user": "bob", "namespace": NS}}],
        "users": [{"name": "bob", "user": {"token": "bob"}}]}))
    second.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "carol@fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": kube.url,
            "certificate-authority-data": base64.b64encode(kube.ca.cert_pem.bytes()).decode()}}],
        "contexts": [{"name": "carol@fake", "context": {"cluster": "fake", "user": "carol"}}],
        # the same user name again: the first file's token is the one used
        "users": [{"name": "bob", "user": {"token": "mallory"}},
                  {"name": "carol", "user": {"token": "carol"}}]}))
    listed = os.pathsep.join([str(first), str(tmp_path / "missing.yaml"), str(second)])
    env = {**os.environ, "KUBECONFIG": listed}
    ours = run_cli(["whoami", "-o", "json"], env={"KUBECONFIG": listed})
    assert ours.code == 0, ours.err
    assert json.loads(ours.out)["status"]["userInfo"]["username"] == "bob"
    theirs = subprocess.run([kubectl_bin, "config", "view", "--minify", "--raw", "-o",
                             "json"],
                            capture_output=True, text=True, env=env, timeout=60, check=True)
    view = json.loads(theirs.stdout)
    assert view["current-context"] == "bob@fake"
    assert view["users"][0]["user"]["token"] == "bob"
    # the context's namespace is the default namespace, as for kubectl
    listing = run_cli(["list", "-o", "json"], env={"KUBECONFIG": listed})
    assert listing.code == 0, listing.err
    # --context picks another context from any of the files
    carol = run_cli(["whoami", "--context", "carol@fake"], env={"KUBECONFIG": listed})
    assert "username: carol" in carol.out, carol.err


def test_kubeconfig_list_of_missing_files_is_one_line(tmp_path):
    listed = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    result = run_cli(["whoami"], env={"KUBECONFIG": listed})
    assert result.code == 2
    assert result.err.strip() == f"error: kubeconfig {listed}: no such file"


# -- apply --wait, status --watch ------------------------------------------------------------

def request_release(cg, manifests):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234")
    assert result.code == 0, result.err


def test_apply_without_wait_refuses_at_once(kube, cg, manifests):
    request_release(cg, manifests)
    result = cg("dana", "apply", DEP, "-n", NS)
    assert result.code == 2 and "not ready to apply" in result.err


def test_apply_wait_applies_once_the_signatures_arrive(kube, cg, manifests, keys):
    request_release(cg, manifests)
    waiting = cg_process(kube, "dana", "apply", DEP, "-n", NS, "--wait", "--timeout", "60s",
                         "--interval", "0.2")
    try:
        first = waiting.stderr.readline()  # it said what it waits for, and waits
        assert first.startswith("waiting: ") and "approvals 0/2" in first, first
        assert waiting.poll() is None
        for who in ("bob", "carol"):  # the whole record: its approvals go in together
            signed = cg(who, "approve", "--record", "CHG-1234", "--key", keys[who], "--yes")
            assert signed.code == 0, signed.err
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert "deployment payments/checkout configured" in out
    image = kube.get("deployments", NS, "checkout")["spec"]["template"]["spec"]["containers"][0]
    assert image["image"].endswith("1.42.0")


def test_apply_wait_times_out_with_the_reason(kube, cg, manifests):
    request_release(cg, manifests)
    started = time.monotonic()
    result = cg("dana", "apply", DEP, "-n", NS, "--wait", "--timeout", "2s", "--interval", "0.2")
    assert result.code == 2
    assert "timed out after 0:00:02 waiting" in result.err and "approvals 0/2" in result.err
    assert 2 <= time.monotonic() - started < 30


def test_apply_wait_does_not_wait_for_what_cannot_change(kube, cg, manifests, keys):
    """bob approved, so bob may not apply: no signature can fix that, so no waiting."""
    request_release(cg, manifests)
    assert cg("bob", "approve", DEP, "--key", keys["bob"], "--yes").code == 0
    started = time.monotonic()
    result = cg("bob", "apply", DEP, "-n", NS, "--wait", "--timeout", "60s")
    assert result.code == 2 and "someone else must apply it" in result.err
    assert time.monotonic() - started < 30


def test_status_watch_prints_each_change_until_a_final_phase(kube, cg, manifests, keys):
    request_release(cg, manifests)
    watching = cg_process(kube, "dana", "status", DEP, "-n", NS, "--watch", "--interval", "0.2")
    seen: list[str] = []

    def read_until(prefix: str) -> str:
        while True:
            line = watching.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
            if line.startswith(prefix):
                return line

    try:
        assert read_until("Approvals:").startswith("Approvals:     0/2")
        assert cg("bob", "approve", DEP, "--key", keys["bob"], "--yes").code == 0
        read_until("---")
        assert read_until("Approvals:").startswith("Approvals:     1/2 (bob;")
        obj = kube.get("changeapprovals", NS, DEP)
        obj["status"] = {"phase": "Applied", "approvals": 1, "required": 2}
        kube.put(obj)  # as the operator records that the change went in
        out, err = watching.communicate(timeout=60)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.communicate()
    assert watching.returncode == 0, err  # a final phase ends the watch
    printed = ("".join(seen) + out).split("---\n")
    assert "Phase:         Applied" in printed[-1]
    # printed again only on a change
    assert all(a != b for a, b in itertools.pairwise(printed))


# -- progress on a terminal ------------------------------------------------------------------

def many(tmp_path: Path, count: int) -> Path:
    docs = []
    for index in range(count):
        cm = release()[1]
        cm["metadata"]["name"] = f"settings-{index}"
        docs.append(cm)
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def run_with_tty_stderr(kube, user: str, *args: str) -> tuple[int, str, str]:
    """The CLI with stdout a pipe and stderr a terminal (a person redirecting the output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "changegate", *args, "--kubeconfig", kube.kubeconfig(user, NS)],
        stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    os.close(terminal)
    seen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(controller)
    return proc.returncode, out, seen.decode("utf-8", "replace")


def test_preflight_and_request_show_progress_on_a_terminal_only(kube, cg, tmp_path):
    path = many(tmp_path, 6)
    code, out, terminal = run_with_tty_stderr(kube, "alice", "preflight", "-f", str(path))
    assert code == 1, terminal  # six new ConfigMaps, not approved yet
    assert "dry-running" in terminal and "100%" in terminal
    assert "0 admitted, 6 denied" in out and "dry-running" not in out
    piped = cg("alice", "preflight", "-f", str(path))
    assert "dry-running" not in piped.err + piped.out  # not a terminal: no bar
    code, out, terminal = run_with_tty_stderr(kube, "alice", "request", "-f", str(path),
                                              "--record", "CHG-7")
    assert code == 0, terminal
    assert "dry-running" in terminal and "requested by alice under CHG-7" in out
