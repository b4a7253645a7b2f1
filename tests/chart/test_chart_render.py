"""The chart renders, lints and validates against Kubernetes 1.37 in every install mode."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest

from .rendering import CHART, KUBE_VERSION, NAMESPACE, ci_values, kinds, objects

CI_VALUES = ci_values()

# Kinds served by CRDs kubernetes-validate has no schema for. They are checked elsewhere:
# the PrometheusRule by promtool (test_promtool.py), cert-manager's objects in
# test_chart_tls.py, our own CRD's objects by the e2e suite.
CRD_BACKED = {"PrometheusRule", "ServiceMonitor", "Certificate", "Issuer"}


def test_there_are_at_least_four_install_modes_under_ci():
    assert "default-values.yaml" in CI_VALUES
    assert len(CI_VALUES) >= 4


@pytest.mark.parametrize("name", sorted(CI_VALUES))
def test_chart_lints_clean_in_strict_mode(name):
    report = helm.lint(CHART, CI_VALUES[name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == []
    assert problems == []


@pytest.mark.parametrize("upgrade", [False, True], ids=["install", "upgrade"])
@pytest.mark.parametrize("name", sorted(CI_VALUES))
def test_every_rendered_object_is_valid_kubernetes_1_37_strict(name, upgrade):
    skipped = set()
    for obj in objects(CI_VALUES[name], upgrade=upgrade):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {where} invalid at {list(exc.path)}: {exc.message}")
    # Only CRD-backed kinds may go unchecked, and only because there is no schema.
    assert skipped <= CRD_BACKED, f"no schema for {skipped - CRD_BACKED}"


def test_default_install_renders_the_expected_objects():
    objs = objects(CI_VALUES["default-values.yaml"])
    assert kinds(objs) == {
        "CustomResourceDefinition", "ValidatingWebhookConfiguration", "Deployment",
        "Service", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole",
        "ClusterRoleBinding", "Role", "RoleBinding", "PodDisruptionBudget", "Job",
    }
    for obj in objs:
        if obj["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                               "ValidatingWebhookConfiguration"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_every_object_carries_the_chart_labels():
    for obj in objects(CI_VALUES["default-values.yaml"]):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "changegate", obj["metadata"]["name"]
