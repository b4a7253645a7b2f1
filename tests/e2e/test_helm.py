"""The real Helm v4 binary (built by tests/cluster/build.sh from tests/cluster/helm): the
pinned version, a strict lint of our chart, and releases on the test cluster as a user."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "changegate"
HELM_GO_MOD = REPO / "tests" / "cluster" / "helm" / "go.mod"
# The chart's tests (tests/chart) lint it with each install mode's values, in its namespace.
# The chart refuses to render without some values (SPEC §11), but `helm lint` turns the
# templates' `fail` into a log line, so the bare lint passes too: it is checked as well.
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "changegate"


def pinned_helm_version() -> str:
    match = re.search(r"^\s*helm\.sh/helm/v4 (v\S+)", HELM_GO_MOD.read_text(), re.MULTILINE)
    assert match, HELM_GO_MOD
    return match.group(1)


def test_helm_reports_the_pinned_release(cluster):
    proc = cluster.helm("admin", "version", "--template", "{{.Version}}", check=True)
    # The source alone says "v4.3"; build.sh stamps the release as helm's Makefile does.
    assert proc.stdout.strip() == pinned_helm_version() == "v4.3.1"


def test_the_real_helm_lints_the_bare_chart_clean_in_strict_mode(cluster):
    proc = cluster.helm("admin", "lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("values", CI_VALUES)
def test_the_real_helm_lints_each_install_mode_clean_in_strict_mode(cluster, values):
    # Capabilities and deprecation checks against the version the test cluster runs.
    server = json.loads(cluster.kubectl("admin", "version", "-o", "json", check=True).stdout)
    proc = cluster.helm(
        "admin", "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values),
        "--namespace", NAMESPACE, "--kube-version", server["serverVersion"]["gitVersion"],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


def test_helm_installs_a_release_with_the_users_own_credentials(cluster, tmp_path):
    ns = f"e2e-helm-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(ns)  # no tier label: not gated
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tiny\ndata:\n"
        "  greeting: {{ .Values.greeting | quote }}\n")

    # Helm keeps release state in Secrets, which alice may not touch (tests/cluster/rbac.yaml):
    # the API server refuses her by name, so helm really runs with her credentials.
    denied = cluster.helm("alice", "install", "tiny", str(chart), "-n", ns,
                          "--set", "greeting=hi")
    assert denied.returncode != 0
    assert 'User "alice" cannot' in denied.stderr and "secrets" in denied.stderr

    cluster.helm("admin", "install", "tiny", str(chart), "-n", ns, "--set", "greeting=hi",
                 check=True)
    cm = json.loads(cluster.kubectl("alice", "get", "configmap", "tiny", "-n", ns, "-o",
                                    "json", check=True).stdout)
    assert cm["data"] == {"greeting": "hi"}
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    releases = json.loads(cluster.helm("admin", "list", "-n", ns, "-o", "json",
                                       check=True).stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("tiny", "deployed")]
