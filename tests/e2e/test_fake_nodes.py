"""Fake nodes (kwok + kube-scheduler, the `nodes` fixture): Deployments really roll out, and
kwok's chaos stage fails containers, all as real API state. The ground the canary gate stands
on: it has to tell a healthy rollout from a crashing one by what the API server says."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.cluster import FAIL_CONTAINERS_LABEL, FAKE_NODE_ANNOTATION, NOT_READY_TAINT


@pytest.fixture(scope="module")
def namespace(cluster, nodes) -> Iterator[str]:
    # No tier label: changegate does not gate this namespace.
    name = f"e2e-nodes-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(name)
    yield name
    # Before the `nodes` fixture ends: kwok's pod-delete stage finishes the Pods' deletion.
    cluster.delete_namespace(name)


def deployment(name: str, replicas: int, image: str = "registry.invalid/web:1",
               labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None,
               min_ready_seconds: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "minReadySeconds": min_ready_seconds,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})},
                             "annotations": annotations or {}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }


def get_json(cluster, ns: str, *args: str) -> dict[str, Any]:
    proc = cluster.kubectl("admin", "get", *args, "-n", ns, "-o", "json", check=True)
    return json.loads(proc.stdout)


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.5)


def test_fake_nodes_are_ready_schedulable_and_run_by_kwok(cluster, nodes):
    for name in nodes:
        node = json.loads(cluster.kubectl("admin", "get", "node", name, "-o", "json",
                                          check=True).stdout)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"]
        assert NOT_READY_TAINT not in [t["key"] for t in node["spec"].get("taints", [])]
        assert node["metadata"]["annotations"][FAKE_NODE_ANNOTATION] == "fake"
        # Written by kwok's node-initialize stage, not by us.
        assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("kwok-")


def test_a_two_replica_deployment_rolls_out_and_updates(cluster, namespace, nodes):
    ns = namespace
    cluster.kubectl("alice", "apply", "-n", ns, "-f", "-",
                    input=json.dumps(deployment("web", 2)), check=True)
    rollout = cluster.kubectl("alice", "rollout", "status", "deployment/web", "-n", ns,
                              "--timeout=60s", timeout=70)
    assert rollout.returncode == 0, rollout.stderr + cluster.logs("kwok")

    status = get_json(cluster, ns, "deployment", "web")["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (2, 2, 2)
    pods = get_json(cluster, ns, "pods", "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in nodes  # bound by kube-scheduler
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert pod["status"]["podIP"]

    # A new image is a new ReplicaSet that takes over, as in any real rollout.
    cluster.kubectl("alice", "set", "image", "deployment/web", "web=registry.invalid/web:2",
                    "-n", ns, check=True)
    rollout = cluster.kubectl("alice", "rollout", "status", "deployment/web", "-n", ns,
                              "--timeout=60s", timeout=70)
    assert rollout.returncode == 0, rollout.stderr
    replicasets = get_json(cluster, ns, "replicasets", "-l", "app=web")["items"]
    by_image = {rs["spec"]["template"]["spec"]["containers"][0]["image"]:
                rs["status"].get("readyReplicas", 0) for rs in replicasets}
    assert by_image == {"registry.invalid/web:1": 0, "registry.invalid/web:2": 2}


def test_chaos_label_makes_containers_fail_and_the_replicaset_replace_them(cluster, namespace):
    ns = namespace
    crashy = deployment(
        "crashy", 1, labels={FAIL_CONTAINERS_LABEL: "true"},
        annotations={f"{FAIL_CONTAINERS_LABEL}/exit-code": "3",
                     f"{FAIL_CONTAINERS_LABEL}/reason": "Error"},
        # kwok first runs the Pod (pod-ready: Ready) and fails it 1-2 s later (the chaos
        # stage's delay plus jitter), so for that moment a crashing Pod counts as available,
        # as a real one that dies right after its readiness probe would. minReadySeconds is
        # how a Deployment says "ready for a while", and no crashing Pod gets there.
        min_ready_seconds=10,
    )
    cluster.kubectl("alice", "apply", "-n", ns, "-f", "-", input=json.dumps(crashy),
                    check=True)

    def failed_pods() -> list[dict[str, Any]]:
        pods = get_json(cluster, ns, "pods", "-l", "app=crashy")["items"]
        return [p for p in pods if p["status"].get("phase") == "Failed"]

    # kwok runs the Pod, then fails its container; the ReplicaSet replaces the failed Pod,
    # and the replacement fails too: a crash loop, one Pod per attempt.
    def two_failed() -> list[dict[str, Any]] | None:
        pods = failed_pods()
        return pods if len(pods) >= 2 else None

    failed = wait_for(two_failed, "two failed crashy pods", timeout=60)
    for pod in failed:
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] is False
        assert container["state"]["terminated"]["exitCode"] == 3
        assert container["state"]["terminated"]["reason"] == "Error"
    status = get_json(cluster, ns, "deployment", "crashy")["status"]
    assert status.get("availableReplicas", 0) == 0
    assert status["unavailableReplicas"] == 1
