"""The container image on the real control plane: its `changegate serve` judges a tier-1
change and its `changegate operator` records the approved one.

The image is built from the Dockerfile by tests/image/build.sh (buildah, a base made with
mmdebstrap; no registry, no daemon) and run by tests/image/container.py as a pod runs it:
its entrypoint, as its non-root user, on a read-only root filesystem, with the host's
network. It is installed as the stories install changegate (tests/e2e/stories.py: the chart's
objects, its service accounts' tokens, the chart's webhook configuration pointing at
127.0.0.1), so the story is the stories' own: an unapproved Deployment change is denied
with changegate's message, the approved one is admitted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.container import CONFIG_DIR, UID, Container

from .stories import (
    BREAK_GLASS_GROUP,
    CONTROLLER,
    POLICY_ADMINS,
    SUFFIX,
    Gate,
    _http,
    deployment,
    wait_for,
    write_manifest,
)

pytest_plugins = ["tests.e2e.stories"]  # stories' teardown: no gate outlives its tests

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tests" / "image" / "build.sh"
IMAGE = "localhost/changegate:e2e"

pytestmark = [
    pytest.mark.skipif(shutil.which("buildah") is None or shutil.which("mmdebstrap") is None,
                       reason="the image e2e test needs buildah and mmdebstrap "
                              "(apt-get install buildah mmdebstrap; .ci/run installs them)"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="buildah builds and runs the image as root here (no rootless "
                              "setup: no subuid ranges, no fuse-overlayfs)"),
]


class ImageGate(Gate):
    """The stories' Gate with serve and the operator run from the image."""

    def __init__(self, cluster, image: str) -> None:
        super().__init__(cluster)
        self.image = image
        # Not the stories' probe namespace: theirs may still be terminating, or ours.
        self.probe_ns = f"image-probe-{SUFFIX}"
        self.containers: list[Container] = []

    def _container(self, files: dict[str, Path], log: Path) -> Container:
        container = Container(self.image, files, log)
        self.containers.append(container)
        return container

    def start_serve(self) -> None:
        cert = self.cluster.webhook_cert
        self.serve_container = self._container(
            {"config.yaml": self.config_file, "tls/tls.crt": cert.cert,
             "tls/tls.key": cert.key, "kubeconfig": self.webhook_kubeconfig}, self.serve_log)
        self.serve = self.serve_container.start([
            "serve", "--tls-cert", f"{CONFIG_DIR}/tls/tls.crt",
            "--tls-key", f"{CONFIG_DIR}/tls/tls.key",
            "--address", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--config", f"{CONFIG_DIR}/config.yaml", "--kubeconfig", f"{CONFIG_DIR}/kubeconfig",
            "--namespace", CONTROLLER, "--policy-admin-groups", POLICY_ADMINS,
            "--break-glass-groups", BREAK_GLASS_GROUP])
        serve = self.serve
        # A cold start of a read-only image (no .pyc written) on a busy 2-core runner.
        wait_for(lambda: serve.poll() is not None or self.readyz()[0] == 200,
                 "the image's changegate serve /readyz", timeout=120)
        assert serve.poll() is None, self.tail(self.serve_log)
        _status, text = self.readyz()
        assert text.startswith("ready") and "invalid" not in text, text

    def start_operator(self) -> None:
        self.operator_container = self._container(
            {"config.yaml": self.config_file, "kubeconfig": self.operator_kubeconfig},
            self.operator_log)
        self.operator = op = self.operator_container.start([
            "operator", "--kubeconfig", f"{CONFIG_DIR}/kubeconfig",
            "--config", f"{CONFIG_DIR}/config.yaml", "--namespace", CONTROLLER, "--standalone",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.operator_port)])
        wait_for(lambda: op.poll() is not None
                 or _http(f"http://127.0.0.1:{self.operator_port}/healthz")[0] == 200,
                 "the image's changegate operator /healthz", timeout=120)
        assert op.poll() is None, self.tail(self.operator_log)

    def _stop(self, proc) -> None:  # type: ignore[override]
        for container in self.containers:
            if proc is not None and container.proc is proc:
                container.stop()

    def close(self) -> None:
        try:
            super().close()
        finally:
            for container in self.containers:  # also those that failed to start
                container.stop()


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout. build.sh is cached: after .ci/run's build (or a first run
    here) this only confirms every layer is current."""
    done = subprocess.run(["bash", str(BUILD_SH), IMAGE], capture_output=True, text=True,
                          timeout=1800, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return IMAGE


@pytest.fixture
def image_gate(cluster, image):
    if not getattr(cluster, "local", False):
        pytest.skip("the image runs on this host's network: it needs the local control "
                    "plane (tests/cluster), not KUBECONFIG")
    gate = ImageGate(cluster, image)
    try:
        gate.install()
        yield gate
    finally:
        gate.close()


def test_the_image_denies_an_unapproved_change_and_admits_an_approved_one(
        image_gate: ImageGate, tmp_path: Path):
    gate = image_gate
    # Both processes run as the image's user, on a read-only root filesystem.
    for container in (gate.serve_container, gate.operator_container):
        assert container.status()["Uid"].split() == [str(UID)] * 4
        assert container.status()["Gid"].split() == [str(UID)] * 4
        assert "ro" in container.root_mount_options()

    ns = gate.namespace("image", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))

    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert 'admission webhook "deployments.changegate.io" denied the request' in r.err
    assert f"changegate: UPDATE Deployment {ns}/checkout denied: no ChangeApproval" in r.err
    line = r.machine_line()
    assert (line["op"], line["approvals"], line["record"]) == ("UPDATE", "0/2", "none")
    assert line["from"] == gate.live_digest("deployment", "checkout", ns)
    logged = gate.decision(namespace=ns, name="checkout", dryRun=False, operation="UPDATE")
    assert (logged["decision"], logged["reason"]) == ("denied", "no_approval")

    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-3001")
    assert req.rc == 0, req.text
    gate.approve("CHG-3001", ns)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text + gate.tail(gate.serve_log)
    assert "deployment.apps/checkout configured" in r.out
    live = gate.get("deployment", "checkout", ns)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.42.0")
    logged = gate.decision(namespace=ns, name="checkout", decision="allowed", reason="approved")
    assert logged["approvers"] == ["bob", "carol"]
    # The image's operator saw the approved change persisted.
    wait_for(lambda: ((gate.approval(ns, "chg-3001-deployment-checkout").get("status") or {})
                      .get("phase")) == "Applied", "the approval Applied", timeout=60)
