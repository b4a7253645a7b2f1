"""The control plane itself: it answers, knows who is calling, and enforces RBAC."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cluster import GITOPS, GITOPS_USER, USERS


def test_api_server_reports_ready(kubectl):
    rc, out, err = kubectl("admin", "get", "--raw", "/readyz")
    assert (rc, out.strip()) == (0, "ok"), err


@pytest.mark.parametrize("user", ["admin", "alice", "bob", "carol", "dana"])
def test_whoami_shows_the_users_name_and_groups(cluster, kubectl, user):
    rc, out, err = kubectl(user, "auth", "whoami", "-o", "json")
    assert rc == 0, err
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == user
    assert info["groups"] == [*USERS[user], "system:authenticated"]
    if cluster.local:
        # A client certificate, not impersonation: the API server names the credential.
        assert info["extra"]["authentication.kubernetes.io/credential-id"][0].startswith(
            "X509SHA256=")


def test_whoami_shows_the_gitops_service_account(cluster, kubectl):
    rc, out, err = kubectl(GITOPS, "auth", "whoami", "-o", "json")
    assert rc == 0, err
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == GITOPS_USER
    assert info["groups"] == [
        "system:serviceaccounts", "system:serviceaccounts:argocd", "system:authenticated"]
    if cluster.local:
        # A pod-bound token, like the one Argo CD's controller pod mounts.
        assert info["extra"]["authentication.kubernetes.io/pod-name"] == [
            "argocd-application-controller-0"]


@pytest.fixture(scope="module")
def team_namespace(cluster):
    name = f"e2e-team-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(name)
    return name


def test_rbac_lets_alice_edit_configmaps_in_her_namespace(kubectl, team_namespace):
    rc, _, err = kubectl("alice", "create", "configmap", "settings", "-n", team_namespace,
                         "--from-literal=A=1")
    assert rc == 0, err


def test_rbac_denies_alice_secrets_and_new_namespaces(kubectl, team_namespace):
    rc, _, err = kubectl("alice", "get", "secrets", "-n", team_namespace)
    assert rc != 0
    assert "Forbidden" in err and 'User "alice" cannot list resource "secrets"' in err
    rc, _, err = kubectl("alice", "create", "namespace", f"alice-{uuid.uuid4().hex[:6]}")
    assert rc != 0
    assert "Forbidden" in err


def test_rbac_denies_alice_outside_her_namespaces(kubectl):
    rc, _, err = kubectl("alice", "get", "configmaps", "-n", "kube-system")
    assert rc != 0
    assert "Forbidden" in err


def test_admin_creates_and_labels_a_namespace_and_alice_sees_the_label(kubectl):
    name = f"e2e-label-{uuid.uuid4().hex[:6]}"
    rc, _, err = kubectl("admin", "create", "namespace", name)
    assert rc == 0, err
    rc, _, err = kubectl("admin", "label", "namespace", name, "tier=tier-1")
    assert rc == 0, err
    rc, out, err = kubectl("alice", "get", "namespace", name, "-o",
                           "jsonpath={.metadata.labels.tier}")
    assert (rc, out) == (0, "tier-1"), err
    rc, out, err = kubectl("alice", "get", "namespaces", "-l", "tier=tier-1", "-o", "name")
    assert rc == 0, err
    assert f"namespace/{name}" in out.split()
