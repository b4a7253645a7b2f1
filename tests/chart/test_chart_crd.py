"""The chart's CRD is the repository's crds/ file, kept across uninstall."""

from __future__ import annotations

import copy

import yaml

from .rendering import CHART, REPO, REQUIRED, ci_values, kinds, merged, objects, one

CANONICAL = REPO / "crds" / "changeapprovals.changegate.io.yaml"
CHART_COPY = CHART / "files" / "changeapprovals.changegate.io.yaml"


def test_chart_copy_is_byte_for_byte_the_repository_crd():
    assert CHART_COPY.read_bytes() == CANONICAL.read_bytes(), (
        "copy crds/changeapprovals.changegate.io.yaml to charts/changegate/files/")


def test_rendered_crd_is_the_repository_crd_plus_the_keep_annotation():
    expected = yaml.safe_load(CANONICAL.read_text())
    for name, values in ci_values().items():
        crds = values.get("crds", {})
        for upgrade in (False, True):
            objs = objects(values, upgrade=upgrade)
            if not crds.get("enabled", True):
                assert "CustomResourceDefinition" not in kinds(objs), name
                continue
            crd = copy.deepcopy(one(objs, "CustomResourceDefinition"))
            annotations = crd["metadata"].pop("annotations")
            keep = annotations.pop("helm.sh/resource-policy", None)
            assert keep == ("keep" if crds.get("keep", True) else None), name
            if annotations:
                crd["metadata"]["annotations"] = annotations
            assert crd == expected


def test_the_crd_can_be_left_to_the_user_or_deleted_with_the_release():
    # Both switches are exercised by ci/ files (monitoring-off: not rendered; hostnetwork:
    # not kept), so the loop above is not vacuous for either.
    ci = ci_values()
    assert ci["monitoring-off-values.yaml"]["crds"] == {"enabled": False}
    assert ci["hostnetwork-values.yaml"]["crds"]["keep"] is False
    assert "CustomResourceDefinition" not in kinds(objects(merged(REQUIRED, {
        "crds": {"enabled": False}})))


def test_crd_is_a_template_so_upgrades_update_it():
    assert not (CHART / "crds").exists()  # Helm installs crds/ once and never upgrades it
