"""The opt-in client-certificate requirement (SPEC §5, issue 18 item 1) on a real
kube-apiserver that presents a client certificate to its webhooks
(`--admission-control-config-file`, a kubeconfig whose user `*` holds the certificate):
`changegate serve --client-ca` with that certificate's CA decides the API server's calls,
refuses a client without one (any pod), and with the wrong CA the API server's own call is
refused, so the entry fails closed.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import Cluster, GoMissing, ensure_binaries, free_port, register_webhook
from tests.support import fixture, trust_yaml

NAMESPACE = "cc-payments"
PROBE = {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "cc-probe", "namespace": NAMESPACE}, "data": {"probe": "1"}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("KUBECONFIG"):
        pytest.skip("needs the local control plane: it starts kube-apiserver with its own "
                    "admission configuration")
    try:
        ensure_binaries()
    except GoMissing:
        pytest.skip("e2e: install Go >= 1.26 (tests/cluster/build.sh builds the control plane)")
    with Cluster(webhook_client_cert=True) as local:
        local.create_namespace(NAMESPACE, {"tier": "tier-1"})
        yield local


class Serve:
    def __init__(self, cluster: Cluster, workdir: Path, client_ca: Path, port: int) -> None:
        state = workdir / "state"
        state.mkdir(exist_ok=True)
        (state / "trust.yaml").write_text(trust_yaml())
        (state / "policy.yaml").write_text("")
        (state / "objects.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": NAMESPACE, "labels": {"tier": "tier-1"}}}))
        self.port, self.metrics_port = port, free_port()
        cert = cluster.webhook_cert
        self.log = workdir / f"serve-{client_ca.parent.name}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "changegate", "serve", "--static", str(state),
                 "--address", "127.0.0.1", "--port", str(port),
                 "--metrics-port", str(self.metrics_port), "--tls-cert", str(cert.cert),
                 "--tls-key", str(cert.key), "--client-ca", str(client_ca)],
                stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz",
                                            timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def vwc(cluster: Cluster, port: int) -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "cc-test"},
            "webhooks": [{
                "name": "configmaps.cc-test.changegate.io",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/validate",
                                 "caBundle": base64.b64encode(
                                     cluster.ca.pair.cert_pem()).decode()},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                           "operations": ["CREATE"], "resources": ["configmaps"]}],
                "namespaceSelector": {"matchLabels": {"tier": "tier-1"}},
                "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"]}]}


def test_the_api_servers_certificate_is_required_and_accepted(cluster: Cluster,
                                                              tmp_path: Path):
    port = free_port()
    serve = Serve(cluster, tmp_path, cluster.webhook_client_ca.pair.cert, port)
    try:
        register_webhook(cluster, vwc(cluster, port), probe=PROBE)
        created = cluster.kubectl("alice", "create", "configmap", "unapproved", "-n",
                                  NAMESPACE, "--from-literal=k=v")
        # changegate itself answered the API server's call: its denial, not a TLS failure.
        assert created.returncode != 0
        assert "changegate: CREATE ConfigMap cc-payments/unapproved denied" in created.stderr
        assert "reason: no_approval" in created.stderr

        # A client without a certificate (a pod posting a forged review) is refused in the
        # TLS handshake, before any HTTP.
        context = ssl.create_default_context(cadata=cluster.ca.pair.cert_pem().decode())
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/validate",
            data=json.dumps(fixture("configmap-create")).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(request, context=context, timeout=10).read()
    finally:
        serve.stop()

    # Requiring another CA's certificate: the API server's call is refused, so the entry
    # fails closed (failurePolicy Fail) rather than skipping changegate.
    other = tmp_path / "other-ca"
    other.mkdir()
    (other / "ca.crt").write_bytes(cluster.ca.pair.cert_pem())  # the users' CA, not its
    wrong = Serve(cluster, tmp_path, other / "ca.crt", port)
    try:
        refused = cluster.kubectl("alice", "create", "configmap", "unapproved-2", "-n",
                                  NAMESPACE, "--from-literal=k=v")
        assert refused.returncode != 0
        assert 'failed calling webhook "configmaps.cc-test.changegate.io"' in refused.stderr
    finally:
        wrong.stop()
