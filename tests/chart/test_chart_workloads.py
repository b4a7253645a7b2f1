"""Webhook and operator pods: available, restricted, and wired to the process config."""

from __future__ import annotations

import pytest
import yaml

from .rendering import CI_VALUES_NAMES, NAMESPACE, ci_values, merged, objects, one

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]


def _pod_specs(objs):
    for obj in objs:
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def _container(objs, deployment):
    [container] = one(objs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", CI_VALUES_NAMES)
def test_every_pod_is_restricted(name):
    specs = dict(_pod_specs(objects(CI_VALUES[name])))
    assert specs
    for pod_name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, pod_name
        assert pod["runAsUser"] == 65532, pod_name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, pod_name
        # hostNetwork only where asked for (webhook.hostNetwork), and only for the webhook.
        host_network = CI_VALUES[name].get("webhook", {}).get("hostNetwork", False)
        assert spec.get("hostNetwork", False) is (
            host_network and pod_name == "changegate-webhook"), pod_name
        assert not spec.get("hostPID"), pod_name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, pod_name
            assert sc["readOnlyRootFilesystem"] is True, pod_name
            assert sc["runAsNonRoot"] is True, pod_name
            assert sc["capabilities"] == {"drop": ["ALL"]}, pod_name
            assert sc.get("privileged", False) is False, pod_name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, pod_name
            assert "memory" in container["resources"]["limits"], pod_name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), pod_name


def test_webhook_runs_three_active_replicas_that_never_dip_in_a_rollout():
    deploy = one(objects(DEFAULT), "Deployment", "changegate-webhook")
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_webhook_has_a_pod_disruption_budget_matching_its_pods():
    objs = objects(DEFAULT)
    pdb = one(objs, "PodDisruptionBudget", "changegate-webhook")
    pods = one(objs, "Deployment", "changegate-webhook")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_webhook_replicas_spread_over_nodes_and_zones():
    spec = one(objects(DEFAULT), "Deployment", "changegate-webhook")["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        labels = constraint["labelSelector"]["matchLabels"]
        assert labels["app.kubernetes.io/component"] == "webhook"


def test_webhook_probes_readiness_liveness_and_startup_on_the_metrics_port():
    container = _container(objects(DEFAULT), "changegate-webhook")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": 8443, "metrics": 8080}


def test_webhook_grace_period_outlasts_its_pre_stop_delay_and_deadline():
    objs = objects(DEFAULT)
    spec = one(objs, "Deployment", "changegate-webhook")["spec"]["template"]["spec"]
    config = yaml.safe_load(one(objs, "ConfigMap", "changegate-config")["data"]["config.yaml"])
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + config["deadlineSeconds"]


def test_webhook_command_follows_the_contract():
    container = _container(objects(DEFAULT), "changegate-webhook")
    assert "command" not in container  # the image's ENTRYPOINT ["changegate"]
    assert container["args"] == [
        "serve", "--config=/etc/changegate/config.yaml",
        "--tls-cert=/etc/changegate/tls/tls.crt", "--tls-key=/etc/changegate/tls/tls.key",
        "--port=8443", "--metrics-port=8080", "--log-level=info",
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/changegate/config.yaml"]["subPath"] == "config.yaml"
    assert "subPath" not in mounts["/etc/changegate/tls"]  # renewals appear in place
    assert "/tmp" in mounts


def test_operator_is_one_standalone_replica_that_never_overlaps():
    objs = objects(DEFAULT)
    deploy = one(objs, "Deployment", "changegate-operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--config=/etc/changegate/config.yaml",
                                 "--expected-webhooks=/etc/changegate/webhooks.yaml",
                                 "--metrics-port=8080", "--standalone", "--log-level=info"]
    # The chart's rendering of its webhook entries, for drift (changegate-config).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/changegate/webhooks.yaml"]["subPath"] == "webhooks.yaml"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "changegate-operator"
    # No PDB: one replica with a PDB would block every node drain.
    assert [p["metadata"]["name"] for p in objs if p["kind"] == "PodDisruptionBudget"] == [
        "changegate-webhook"]


def test_process_config_follows_the_contract():
    values = merged(DEFAULT, {"webhook": {"timeoutSeconds": 10}})
    config = yaml.safe_load(
        one(objects(values), "ConfigMap", "changegate-config")["data"]["config.yaml"])
    assert config == {
        "namespace": NAMESPACE,
        "trustConfigMap": "changegate-trust",
        "policyConfigMap": "changegate-policy",
        "operatorServiceAccount": f"system:serviceaccount:{NAMESPACE}:changegate-operator",
        "policyAdminGroups": ["platform-admins"],
        "breakGlassGroups": ["sre-oncall"],
        "deadlineSeconds": 9,
        "maxBodyBytes": 3145728,
    }


def test_a_process_config_change_rolls_the_pods():
    def checksum(values):
        deploy = one(objects(values), "Deployment", "changegate-webhook")
        return deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    changed = merged(DEFAULT, {"policy": {"policyAdminGroups": ["someone-else"]}})
    assert checksum(DEFAULT) != checksum(changed)


def test_image_is_pinned_by_digest_when_given():
    objs = objects(CI_VALUES["ha-values.yaml"])
    image = _container(objs, "changegate-webhook")["image"]
    assert image == ("ghcr.io/changegate/changegate:0.1.0@sha256:"
                     + "0" * 64)
    assert _container(objs, "changegate-operator")["image"] == image
