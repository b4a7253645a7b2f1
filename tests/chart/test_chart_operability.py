"""cert-manager-style escape hatches: per-component pod settings, host network, CRD
switches, an existing issuer, log level, and the Grafana dashboard ConfigMap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helm_python import HelmValuesError

from .rendering import CHART, REQUIRED, ci_values, kinds, merged, objects, one

CI_VALUES = ci_values()
HA = CI_VALUES["ha-values.yaml"]
HOST = CI_VALUES["hostnetwork-values.yaml"]
COMPONENTS = {"webhook": "changegate-webhook", "operator": "changegate-operator"}

# The values issue 23 added. Each must be set in some ci/*-values.yaml, which every chart
# test renders (and tests/e2e/test_helm.py lints with `helm lint --strict`).
NEW_VALUES = [
    "logLevel", "logFormat", "crds.enabled", "crds.keep",
    "webhook.securePort", "webhook.hostNetwork",
    "webhook.clientAuth.enabled", "webhook.clientAuth.caCert",
    "networkPolicy.enabled", "networkPolicy.webhookFrom", "networkPolicy.metricsFrom",
    "tls.certManager.issuerRef.name", "tls.certManager.issuerRef.kind",
    "tls.certManager.issuerRef.group",
    "grafana.dashboard.enabled", "grafana.dashboard.annotations",
    *(f"{component}.{key}" for component in COMPONENTS for key in (
        "podLabels", "affinity", "extraArgs", "extraEnv", "volumes", "volumeMounts",
        "securityContext", "containerSecurityContext", "resources")),
]


def _is_set(values, path):
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


@pytest.mark.parametrize("path", NEW_VALUES)
def test_every_new_value_is_set_in_a_ci_values_file(path):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _is_set(defaults, path), f"{path} is not in values.yaml"
    assert [name for name, values in CI_VALUES.items() if _is_set(values, path)], path


def _pod(objs, component):
    return one(objs, "Deployment", COMPONENTS[component])["spec"]["template"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_escape_hatches_render_into_its_pod(component):
    set_ = HA[component]
    objs = objects(HA)
    template = _pod(objs, component)
    spec = template["spec"]
    [container] = spec["containers"]
    selector = one(objs, "Deployment", COMPONENTS[component])["spec"]["selector"]["matchLabels"]
    assert template["metadata"]["labels"]["team"] == "platform"
    assert "team" not in selector  # a label change never orphans the ReplicaSets
    assert spec["affinity"] == set_["affinity"]
    # Appended after the chart's own flags, so a repeated flag wins (click: last one).
    assert container["args"][-len(set_["extraArgs"]):] == set_["extraArgs"]
    env = {e["name"]: e for e in container["env"]}
    assert "POD_NAMESPACE" in env and env["PYTHONFAULTHANDLER"]["value"] == "1"
    assert {v["name"] for v in spec["volumes"]} >= {"config", "tmp", "corporate-ca"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/etc/changegate/config.yaml", "/tmp", "/etc/ssl/corporate"}
    # Merged over the restricted defaults, not replacing them.
    assert spec["securityContext"]["supplementalGroups"] == [2000]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"] == set_["resources"]  # ephemeral-storage passes through


@pytest.mark.parametrize("component", COMPONENTS)
def test_extra_args_in_ci_values_are_flags_the_process_has(component):
    command = "serve" if component == "webhook" else "operator"
    help_text = subprocess.run([sys.executable, "-m", "changegate", command, "--help"],
                               capture_output=True, text=True, check=True).stdout
    for arg in HA[component]["extraArgs"]:
        assert arg.split("=")[0] in help_text, arg


def test_defaults_keep_the_restricted_security_contexts():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in COMPONENTS:
        spec = _pod(objects(merged(REQUIRED)), component)["spec"]
        assert spec["securityContext"] == values[component]["securityContext"]
        assert spec["containers"][0]["securityContext"] == values[component][
            "containerSecurityContext"]
        assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert "hostNetwork" not in spec and "affinity" not in spec


def test_a_security_context_key_can_be_dropped_with_null():
    objs = objects(merged(REQUIRED, {"webhook": {"securityContext": {"fsGroup": None}}}))
    assert "fsGroup" not in _pod(objs, "webhook")["spec"]["securityContext"]


def test_host_network_moves_the_webhook_to_node_ports():
    objs = objects(HOST)
    spec = _pod(objs, "webhook")["spec"]
    [container] = spec["containers"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # still resolves cluster names
    assert "--port=9443" in container["args"] and "--metrics-port=9080" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "https": 9443, "metrics": 9080}
    service = one(objs, "Service", "changegate-webhook")
    https = next(p for p in service["spec"]["ports"] if p["name"] == "https")
    assert (https["port"], https["targetPort"]) == (443, "https")
    assert "hostNetwork" not in _pod(objs, "operator")["spec"]


def test_log_level_reaches_both_processes():
    objs = objects(HOST)
    for component in COMPONENTS:
        assert "--log-level=debug" in _pod(objs, component)["spec"]["containers"][0]["args"]


def test_an_existing_cluster_issuer_signs_the_certificate_and_no_issuer_is_made():
    objs = objects(HOST)
    assert "Issuer" not in kinds(objs)
    certificate = one(objs, "Certificate")
    assert certificate["metadata"]["name"] == "changegate-webhook-tls"
    assert certificate["spec"]["issuerRef"] == {
        "name": "corporate-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    # The chart's own CA chain when no issuer is named.
    own = objects(CI_VALUES["certmanager-values.yaml"])
    assert {o["metadata"]["name"] for o in own if o["kind"] == "Issuer"} == {
        "changegate-selfsigned", "changegate-ca"}
    assert one(own, "Certificate", "changegate-webhook-tls")["spec"]["issuerRef"][
        "name"] == "changegate-ca"


def test_the_dashboard_configmap_is_opt_in_and_carries_the_sidecar_label():
    assert not [o for o in objects(merged(REQUIRED)) if o["metadata"]["name"]
                == "changegate-dashboard"]
    cm = one(objects(CI_VALUES["certmanager-values.yaml"]), "ConfigMap", "changegate-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "changegate"}
    shipped = json.loads((CHART / "files" / "dashboards" / "changegate.json").read_text())
    assert json.loads(cm["data"]["changegate.json"]) == shipped


@pytest.mark.parametrize("typo", [
    {"logFormat": "text"},  # json is the only format the processes write
    {"logLevel": "verbose"},
    {"crds": {"keeep": True}},
    {"webhook": {"port": 8443}},  # renamed securePort
    {"webhook": {"securityContext": {"runAsUsr": 1}}},
    {"webhook": {"containerSecurityContext": {"capabilities": {"dorp": ["ALL"]}}}},
    {"operator": {"resources": {"request": {"cpu": "1"}}}},
    {"operator": {"extraArgs": "--log-level=debug"}},
    {"webhook": {"volumeMounts": [{"name": "x"}]}},
    {"tls": {"certManager": {"issuerRef": {"name": "x", "kind": "Vault"}}}},
    {"grafana": {"dashboard": {"label": {"grafana_dashboard": "1"}}}},
])
def test_a_typo_in_a_new_value_fails_the_install(typo):
    with pytest.raises(HelmValuesError, match="schema"):
        objects(merged(REQUIRED, typo))


def test_chart_metadata_names_home_sources_and_maintainers():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
