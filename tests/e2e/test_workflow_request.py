"""`changegate request` against the real API server: the digests it signs are the ones the
real server-side dry-run gives, for client-side and server-side apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from changegate.core.digest import digest

REPO = Path(__file__).resolve().parents[2]
NS = "workflow-e2e"


def release(image: str, timeout: str) -> list[dict]:
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "checkout", "labels": {"app": "checkout"}},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                  "template": {"metadata": {"labels": {"app": "checkout"}},
                               "spec": {"containers": [
                                   {"name": "checkout", "image": image,
                                    "env": [{"name": "MODE", "value": "live"},
                                            {"name": "DEBUG", "value": "0"}]}]}}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "checkout-config"},
         "data": {"PAYMENT_TIMEOUT_MS": timeout}},
    ]


@pytest.fixture(scope="module")
def workflow_ns(cluster):
    crd = yaml.safe_load((REPO / "crds" / "changeapprovals.changegate.io.yaml").read_text())
    cluster.apply(crd)
    cluster.kubectl("admin", "wait", "--for=condition=established", "--timeout=60s",
                    "crd/changeapprovals.changegate.io", check=True)
    cluster.create_namespace(NS, {"tier": "tier-1"})
    return NS


def kubeconfig(cluster, user: str) -> str:
    return str(cluster.kubeconfigs.get(user, cluster.admin_kubeconfig))


def changegate(cluster, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The CLI runs kubectl for client-side apply: the one built with this control plane.
    path = f"{Path(cluster.kubectl_bin).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run([sys.executable, "-m", "changegate", *args, "-n", NS,
                           "--kubeconfig", kubeconfig(cluster, user)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PATH": path})


def server_dry_run(cluster, user: str, path: Path, *flags: str) -> list[dict]:
    proc = cluster.kubectl(user, "apply", "-n", NS, "--dry-run=server", "-o", "json", *flags,
                           "-f", str(path), check=True)
    doc = json.loads(proc.stdout)
    return doc["items"] if doc.get("kind") == "List" else [doc]


def approval(cluster, name: str) -> dict:
    proc = cluster.kubectl("admin", "get", "changeapprovals", "-n", NS, name, "-o", "json",
                           check=True)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["client-side", "server-side"])
def test_request_signs_the_digest_the_real_dry_run_gives(cluster, workflow_ns, tmp_path, mode):
    user = "alice" if "alice" in cluster.kubeconfigs else "admin"
    first = tmp_path / "v1.yaml"
    first.write_text(yaml.safe_dump_all(release("registry.example/checkout:1.41.0", "2500")))
    cluster.kubectl(user, "apply", "-n", NS, "-f", str(first), check=True)  # as a team would
    nxt = tmp_path / "v2.yaml"
    tag = "1.42.0" if mode == "client-side" else "1.43.0"
    nxt.write_text(yaml.safe_dump_all(release(f"registry.example/checkout:{tag}", "250")))
    flags = ("--server-side", "--force-conflicts") if mode == "server-side" else ()
    record = "CHG-100" if mode == "client-side" else "CHG-200"
    started = datetime.now(UTC).replace(microsecond=0)
    result = changegate(cluster, user, "request", "-f", str(nxt), "--record", record, *flags)
    assert result.returncode == 0, result.stdout + result.stderr

    expected = {d["kind"]: d for d in server_dry_run(cluster, user, nxt, *flags)}
    lives = {k: json.loads(cluster.kubectl(user, "get", "-n", NS, k.lower(), name, "-o",
                                            "json", check=True).stdout)
             for k, name in (("Deployment", "checkout"), ("ConfigMap", "checkout-config"))}
    for kind, name in (("Deployment", "checkout"), ("ConfigMap", "checkout-config")):
        ca = approval(cluster, f"{record.lower()}-{kind.lower()}-{name}")
        spec = ca["spec"]
        assert spec["toDigest"] == digest(expected[kind]), kind
        assert spec["fromDigest"] == digest(lives[kind]), kind
        assert spec["target"]["uid"] == lives[kind]["metadata"]["uid"]
        if user != "admin":  # an external cluster's admin has a name we cannot know
            assert spec["requestedBy"] == user
        # issuedAt is the API server's clock: within a minute of this test's.
        issued = datetime.fromisoformat(spec["issuedAt"].replace("Z", "+00:00"))
        assert abs((issued - started).total_seconds()) < 60
    if getattr(cluster, "audit_log", None) is not None:
        # The dry-runs really went to this API server, as this user.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = [json.loads(line) for line in cluster.audit_log.read_text().splitlines()]
            dry = [e for e in events if "dryRun=All" in e.get("requestURI", "")
                   and e.get("user", {}).get("username") == user
                   and f"/namespaces/{NS}/deployments/checkout" in e.get("requestURI", "")]
            if dry:
                break
            time.sleep(0.5)
        assert dry, "no dry-run of the Deployment in the API server's audit log"
