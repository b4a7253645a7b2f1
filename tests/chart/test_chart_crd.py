"""The chart's CRD is the repository's crds/ file, kept across uninstall."""

from __future__ import annotations

import copy

import yaml

from .rendering import CHART, REPO, ci_values, objects, one

CANONICAL = REPO / "crds" / "changeapprovals.changegate.io.yaml"
CHART_COPY = CHART / "files" / "changeapprovals.changegate.io.yaml"


def test_chart_copy_is_byte_for_byte_the_repository_crd():
    assert CHART_COPY.read_bytes() == CANONICAL.read_bytes(), (
        "copy crds/changeapprovals.changegate.io.yaml to charts/changegate/files/")


def test_rendered_crd_is_the_repository_crd_plus_the_keep_annotation():
    expected = yaml.safe_load(CANONICAL.read_text())
    for values in ci_values().values():
        for upgrade in (False, True):
            crd = copy.deepcopy(one(objects(values, upgrade=upgrade), "CustomResourceDefinition"))
            annotations = crd["metadata"].pop("annotations")
            assert annotations.pop("helm.sh/resource-policy") == "keep"
            if annotations:
                crd["metadata"]["annotations"] = annotations
            assert crd == expected


def test_crd_is_a_template_so_upgrades_update_it():
    assert not (CHART / "crds").exists()  # Helm installs crds/ once and never upgrades it
