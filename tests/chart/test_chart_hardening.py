"""Issue 18 in the chart: the webhook's account with externalURL, the opt-in client
certificate, the opt-in NetworkPolicy."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from changegate.config import load_config
from changegate.webhook.tls import ReloadingCertificate
from tests.integration import tlsutil

from .rendering import ci_values, merged, objects, one

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]
EXTERNAL = CI_VALUES["externalurl-values.yaml"]
PEER_API = {"ipBlock": {"cidr": "10.0.0.10/32"}}
PEER_PROM = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_external_url_still_renders_the_webhook_account_and_its_bindings():
    """Item 9: an out-of-cluster webhook lists and watches as changegate-webhook."""
    objs = objects(EXTERNAL)
    account = one(objs, "ServiceAccount", "changegate-webhook")
    subject = {"kind": "ServiceAccount", "name": "changegate-webhook",
               "namespace": account["metadata"]["namespace"]}
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(objs, kind, "changegate-webhook")
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["kind"] == role_kind
        one(objs, role_kind, binding["roleRef"]["name"])  # the role it names is there


def _policy(values):
    return [o for o in objects(values) if o["kind"] == "NetworkPolicy"]


def test_network_policy_is_opt_in():
    assert _policy(DEFAULT) == []
    on = {"networkPolicy": {"enabled": True}}
    assert _policy(merged(EXTERNAL, on)) == []  # no webhook pods to protect


def test_network_policy_admits_only_the_listed_peers_on_each_port():
    values = merged(DEFAULT, {"networkPolicy": {
        "enabled": True, "webhookFrom": [PEER_API], "metricsFrom": [PEER_PROM]}})
    objs = objects(values)
    [policy] = [o for o in objs if o["kind"] == "NetworkPolicy"]
    pod = one(objs, "Deployment", "changegate-webhook")["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # its calls to the API stay open
    webhook_rule, metrics_rule = policy["spec"]["ingress"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert webhook_rule["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert {"https", "metrics"} <= ports
    assert webhook_rule["from"] == [PEER_API]
    # Prometheus, and the chart's own install Job that waits for /readyz.
    job = one(objs, "Job", "changegate-wait-webhook-ready")["spec"]["template"]
    [install, prometheus] = metrics_rule["from"]
    assert install["podSelector"]["matchLabels"].items() <= job["metadata"]["labels"].items()
    assert prometheus == PEER_PROM


def test_network_policy_without_peers_leaves_each_port_open_to_every_source():
    [policy] = _policy(merged(DEFAULT, {"networkPolicy": {"enabled": True}}))
    assert all("from" not in rule for rule in policy["spec"]["ingress"])


def test_client_auth_needs_a_ca_certificate():
    from helm_python import HelmError

    with pytest.raises(HelmError, match=r"webhook\.clientAuth\.caCert"):
        objects(merged(DEFAULT, {"webhook": {"clientAuth": {"enabled": True}}}))


def test_client_auth_mounts_the_ca_the_webhook_is_told_to_require(tmp_path: Path):
    ca = tlsutil.TestCA.create("kube-apiserver-client-ca")
    objs = objects(merged(DEFAULT, {"webhook": {"clientAuth": {
        "enabled": True, "caCert": ca.pem.decode()}}}))
    data = one(objs, "ConfigMap", "changegate-config")["data"]
    config = yaml.safe_load(data["config.yaml"])
    assert config["clientCa"] == "/etc/changegate/client-ca.crt"
    container = one(objs, "Deployment", "changegate-webhook")["spec"]["template"]["spec"][
        "containers"][0]
    assert {"name": "config", "mountPath": config["clientCa"], "subPath": "client-ca.crt",
            "readOnly": True} in container["volumeMounts"]
    assert "--config=/etc/changegate/config.yaml" in container["args"]
    # What the pod would read: the process config as serve loads it, and the CA file as
    # the TLS layer loads it (it requires a client certificate from then on).
    ca_file = tmp_path / "client-ca.crt"
    ca_file.write_text(data["client-ca.crt"])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({**config, "clientCa": str(ca_file)}))
    loaded = load_config(str(config_file), env={})
    assert loaded.client_ca == str(ca_file)
    cert, key, _ = tlsutil.TestCA.create().issue(tmp_path / "tls")
    context = ReloadingCertificate(str(cert), str(key), client_ca=loaded.client_ca).context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1


def test_without_client_auth_the_config_names_no_ca():
    data = one(objects(DEFAULT), "ConfigMap", "changegate-config")["data"]
    assert "clientCa" not in yaml.safe_load(data["config.yaml"])
    assert "client-ca.crt" not in data
