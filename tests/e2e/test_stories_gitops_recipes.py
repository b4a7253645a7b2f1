"""Story 23: the recipes of docs/gitops.md, run as written (docs/examples/releases/*.sh), each
step by the person or controller it names, with their own credentials: real Helm v4,
kubectl's built-in kustomize, and the GitOps controller's pod-bound token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .stories import Gate, Result, configmap, deployment, write_manifest
from .test_stories_gitops import PATTERNS, SIGNERS
from .test_stories_helm_release import CHART, release_namespace, state

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "releases"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for PATH with `changegate` (this checkout's, by the running interpreter)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "changegate"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m changegate "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def run(gate: Gate, tools: Path, script: str, user: str, **env: str) -> Result:
    """docs/examples/releases/SCRIPT as `user` (their kubeconfig), with env's variables."""
    full = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "CHANGEGATE_KEY")}
    full.update(gate.cluster.helm_env())
    full.update(env, NO_COLOR="1", KUBECONFIG=str(gate.cluster.kubeconfigs[user]),
                PATH=f"{tools}:{gate.cluster.bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["sh", str(EXAMPLES / script)], capture_output=True, text=True,
                          timeout=300, check=False, env=full)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_the_helm_recipe(gate: Gate, tools: Path, tmp_path: Path):
    ns = release_namespace(gate, "s13-helm")
    v1 = tmp_path / "v1.yaml"
    v1.write_text("image: registry.example/shop:1.0.0\ntimeoutMs: '2500'\n")
    r = gate.cluster.helm("alice", "install", "shop", str(CHART), "-n", ns, "-f", str(v1))
    assert r.returncode == 0, r.stderr
    gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    gate.wait_gated(ns)
    before = state(gate, ns)

    v2 = tmp_path / "v2.yaml"
    v2.write_text("image: registry.example/shop:1.2.0\ntimeoutMs: '900'\n")
    env = {"RELEASE": "shop", "CHART": str(CHART), "VALUES": str(v2), "NS": ns,
           "RECORD": "CHG-13101"}
    r = run(gate, tools, "helm-request.sh", "alice", **env)
    assert r.rc == 0, r.text
    # The deploy job with approvals missing: preflight says why, helm never runs.
    r = run(gate, tools, "helm-deploy.sh", "alice", TRIES="1", **env)
    assert r.rc == 1 and "0 admitted, 2 denied" in r.out, r.text
    assert "approvals are still missing" in r.err
    assert state(gate, ns) == before
    for who in ("bob", "carol"):
        r = run(gate, tools, "approve-record.sh", who, KEY=str(gate.keys[who]), **env)
        assert r.rc == 0, r.text
    r = run(gate, tools, "helm-deploy.sh", "alice", TRIES="1", **env)
    assert r.rc == 0, r.text
    assert "2 admitted, 0 denied" in r.out
    after = state(gate, ns)
    for kind, name in (("deployment", "shop"), ("configmap", "shop-config")):
        ca = gate.approval(ns, f"chg-13101-{kind}-{name}")
        assert after[kind][0] == ca["spec"]["toDigest"]


def test_the_kustomize_recipe(gate: Gate, tools: Path, tmp_path: Path):
    ns = gate.namespace("s13-kustomize", tier1=False)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    write_manifest(overlay / "deployment.yaml", deployment("shop", "1.0.0"))

    def config(timeout: str) -> None:
        (overlay / "kustomization.yaml").write_text(
            "resources: [deployment.yaml]\nlabels:\n  - pairs: {team: shop}\n"
            "configMapGenerator:\n  - name: shop-config\n"
            f"    literals: [TIMEOUT_MS={timeout}]\n")

    config("2500")
    render = gate.kubectl("alice", "kustomize", str(overlay))
    assert gate.kubectl("alice", "apply", "-n", ns, "-f", "-", input=render.out).rc == 0
    gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    gate.wait_gated(ns)
    config("250")
    env = {"OVERLAY": str(overlay), "SELECTOR": "team=shop", "NS": ns, "RECORD": "CHG-13201"}
    r = run(gate, tools, "kustomize-request.sh", "alice", **env)
    assert r.rc == 0, r.text
    assert [line.split()[1] for line in r.out.splitlines()
            if "changeapproval/" in line].count("DELETE") == 1, r.out
    r = run(gate, tools, "kustomize-deploy.sh", "alice", **env)
    assert r.rc == 1 and "DENY" in r.out, r.text
    for who in ("bob", "carol"):
        assert run(gate, tools, "approve-record.sh", who, KEY=str(gate.keys[who]), **env).rc == 0
    r = run(gate, tools, "kustomize-deploy.sh", "alice", **env)
    assert r.rc == 0, r.text
    assert "pruned" in r.out and "created" in r.out, r.out


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_the_gitops_recipe(gate: Gate, tools: Path, tmp_path: Path, pattern: str):
    mark, write_flags, request_flags = PATTERNS[pattern]
    ns = gate.namespace(f"s13-{pattern}", tier1=False)
    repo = tmp_path / "repo"
    manifests, approvals = repo / "app", repo / "approvals"
    manifests.mkdir(parents=True)

    def commit(image: str, timeout: str) -> None:
        write_manifest(manifests / "release.yaml", mark(ns, deployment("shop", image)),
                       mark(ns, configmap("shop-config", {"TIMEOUT_MS": timeout})))

    commit("1.0.0", "2500")
    sync_script = "flux-sync.sh" if pattern == "flux" else "argocd-sync.sh"
    env = {"MANIFESTS": str(manifests), "APPROVALS": str(approvals), "NS": ns,
           "SYNC_FLAGS": " ".join(write_flags)}
    r = gate.kubectl("gitops", "apply", *write_flags, "-n", ns, "-f", str(manifests))
    assert r.rc == 0, r.err
    gate.kubectl("admin", "label", "namespace", ns, "tier=tier-1")
    gate.wait_gated(ns)

    record = f"CHG-133{sorted(PATTERNS).index(pattern)}1"
    env.update(RECORD=record, WRITE_FLAGS=" ".join(request_flags))
    commit("1.3.0", "300")
    r = run(gate, tools, "gitops-request.sh", "alice", KEY=str(gate.keys["alice"]), **env)
    assert r.rc == 0, r.text
    # Merged before the approvers signed: the controller creates the ChangeApprovals (alice's
    # signature is on them) but the objects are refused, and the next sync retries.
    r = run(gate, tools, sync_script, "gitops", **env)
    assert r.rc != 0 and "approvals=0/2" in r.err, r.text
    for who in SIGNERS:  # a senior among them: the controller is automation
        r = run(gate, tools, "gitops-sign.sh", who, KEY=str(gate.keys[who]), **env)
        assert r.rc == 0, r.text
    r = run(gate, tools, sync_script, "gitops", **env)
    assert r.rc == 0, r.text
    for f in sorted(approvals.glob("*.yaml")):
        ca = yaml.safe_load(f.read_text())
        t = ca["spec"]["target"]
        assert gate.live_digest(t["kind"].lower(), t["name"], ns) == ca["spec"]["toDigest"]
