"""Fixtures for the workflow CLI: a fake API server seeded like a real tier-1 namespace, the
story cast's keys, and a runner that calls the real `changegate` entry point in-process."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from changegate.cli.main import main
from tests.fakeapi import FakeKube
from tests.support import key, trust_yaml

NS = "payments"

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "checkout", "labels": {"app": "checkout"}},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "checkout"}},
             "template": {"metadata": {"labels": {"app": "checkout"}},
                          "spec": {"containers": [
                              {"name": "checkout", "image": "registry.example/checkout:1.41.0",
                               "env": [{"name": "MODE", "value": "live"},
                                       {"name": "DEBUG", "value": "0"}]}]}}}}
CONFIGMAP: dict[str, Any] = {
    "apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "checkout-config", "labels": {"app": "checkout"}},
    "data": {"PAYMENT_TIMEOUT_MS": "2500"}}


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def release(image: str = "registry.example/checkout:1.42.0", timeout: str = "250"
            ) -> list[dict[str, Any]]:
    """The next release's documents: a new image and a new timeout."""
    dep, cm = copy.deepcopy(DEPLOYMENT), copy.deepcopy(CONFIGMAP)
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
    cm["data"]["PAYMENT_TIMEOUT_MS"] = timeout
    return [dep, cm]


def with_last_applied(doc: dict[str, Any]) -> dict[str, Any]:
    """The object as `kubectl apply` creates it: the config plus its own JSON (Go's
    json.Marshal: sorted keys, no spaces, a trailing newline) in the annotation."""
    out = copy.deepcopy(doc)
    config = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    out["metadata"].setdefault("annotations", {})[
        "kubectl.kubernetes.io/last-applied-configuration"] = config
    return out


def find_kubectl() -> str | None:
    """kubectl on PATH, else the one the e2e build put in the cache."""
    found = shutil.which("kubectl")
    if found:
        return found
    cached = sorted(Path.home().glob(".cache/changegate/k8s-*/bin/kubectl"))
    return str(cached[-1]) if cached else None


@pytest.fixture(autouse=True)
def kubectl_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`request` and `apply` let kubectl compute client-side apply: it must be on PATH, and
    its discovery cache goes in the test's own directory, not ~/.kube."""
    kubectl = find_kubectl()
    if kubectl is not None:
        monkeypatch.setenv("PATH", f"{Path(kubectl).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kubectl-cache"))


def seed(kube: FakeKube) -> None:
    kube.put({"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": NS, "labels": {"tier": "tier-1"}}})
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "changegate"}})
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "changegate-info", "namespace": "changegate"},
              "data": {"clusterName": "prod-eu-1", "requiredApprovals": "2",
                       "maxApprovalLifetime": "24h", "version": "0.1.0"}})
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "changegate-trust", "namespace": "changegate"},
              "data": {"approvers.yaml": kube.trust_text}})
    for doc in (DEPLOYMENT, CONFIGMAP):
        # As `kubectl apply` created them: the config plus its last-applied annotation.
        live = with_last_applied(doc)
        live["metadata"]["namespace"] = NS
        kube.put(live)
    kube.forbid("*", "/api/v1/namespaces/changegate/configmaps/changegate-policy")


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path)
    fake.trust_text = trust_yaml()
    fake.policy_text = "clusterName: prod-eu-1\n"
    fake.start()
    seed(fake)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """PEM private keys of the cast; alice's is a requester key, bob and carol approve."""
    out = {}
    for name, alg in (("alice", "ed25519"), ("bob", "ed25519"), ("carol", "ed25519"),
                      ("erin", "p256"), ("mallory", "ed25519")):
        path = tmp_path / f"{name}.key"
        path.write_bytes(key(name, alg).pem())
        out[name] = str(path)
    return out


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump_all(release()))
    return path


def run_cli(args: list[str], *, input: str | None = None,
            env: dict[str, str | None] | None = None) -> Result:
    """The real entry point, in-process: its own error handling, exit codes and streams."""
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def cg(kube: FakeKube):  # type: ignore[no-untyped-def]
    """cg(user, *args) runs `changegate ARGS` as that user against the fake API server."""

    def run(user: str, *args: str, input: str | None = None,
            env: dict[str, str | None] | None = None) -> Result:
        return run_cli([*args, "--kubeconfig", kube.kubeconfig(user, NS)], input=input,
                       env=env)

    return run


def cg_process(kube: FakeKube, user: str, *args: str) -> subprocess.Popen[str]:
    """`changegate` as a separate process (for races and for 'never a traceback')."""
    return subprocess.Popen(
        [sys.executable, "-m", "changegate", *args, "--kubeconfig", kube.kubeconfig(user, NS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"})
