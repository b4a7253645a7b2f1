"""e2e tests run against a real kube-apiserver: ours (built from pinned Go modules and started
on 127.0.0.1 by tests.cluster) or, when KUBECONFIG is set, that cluster (users impersonated)."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, ExternalCluster, GoMissing, ensure_binaries

HERE = Path(__file__).resolve().parent
ENABLE_HINT = (
    "e2e: install Go >= 1.26 (tests/cluster/build.sh builds the control plane) or set KUBECONFIG"
)

Kubectl = Callable[..., tuple[int, str, str]]


@functools.cache
def _unavailable() -> bool:
    """No KUBECONFIG, no Go and no cached binaries (build.sh is a no-op needing no Go when
    they are cached, and fails fast without building when they are not)."""
    if os.environ.get("KUBECONFIG") or shutil.which("go"):
        return False
    try:
        ensure_binaries()
    except GoMissing:
        return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items; mark only ours.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Raised here (not in a fixture or a mark) the skip has this one location, so `-ra`
    # folds every e2e test into ONE summary line that says how to enable them.
    if HERE in item.path.parents and _unavailable():
        pytest.skip(ENABLE_HINT)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster | ExternalCluster]:
    if os.environ.get("KUBECONFIG"):
        yield ExternalCluster(os.environ["KUBECONFIG"]).start()
        return
    # With the controller manager, Deployments roll (ReplicaSets, revision annotation, status)
    # and the webhook sees the controllers' own writes, as in a real cluster.
    local = Cluster(controller_manager=True)
    try:
        local.start()
    except GoMissing:  # Go is there but older than k8s.io/kubernetes needs
        pytest.skip(ENABLE_HINT)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def nodes(cluster: Cluster | ExternalCluster) -> Iterator[list[str]]:
    """Two fake nodes (kwok + kube-scheduler) on the session's cluster: Pods get scheduled,
    Running and Ready, so Deployments roll out. Per module and removed after it, so the rest
    of the suite keeps a cluster where Pods stay Pending and pays nothing for kwok (about
    3.5 s per module that uses it). A module using it must delete its Pods before it ends
    (cluster.delete_namespace). While it runs, kube-scheduler also binds the Pending Pods
    earlier modules left behind, and kwok runs them; their namespaces are finished with."""
    if not isinstance(cluster, Cluster):
        pytest.skip("fake nodes need the local control plane (KUBECONFIG is set)")
    names = cluster.add_nodes(2)
    try:
        yield names
    finally:
        cluster.remove_nodes()


@pytest.fixture
def kubectl(cluster: Cluster | ExternalCluster) -> Kubectl:
    """kubectl(user, *args, input=None) -> (rc, stdout, stderr), as that user."""

    def run(user: str, *args: str, input: str | None = None, timeout: float = 60):
        proc = cluster.kubectl(user, *args, input=input, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr

    return run
