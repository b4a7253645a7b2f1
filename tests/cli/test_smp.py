"""The three-way strategic merge patch `kubectl apply` sends, and the patch semantics behind
it. Expected patches are kubectl's (apimachinery strategicpatch) for the same inputs; the
e2e test checks the stored result against a real `kubectl apply --dry-run=server`."""

from __future__ import annotations

import copy
import json

from changegate.workflow.smp import LAST_APPLIED, client_side_apply_patch, last_applied
from tests.cli.conftest import DEPLOYMENT
from tests.cli.fakeapi import strategic_merge


def live_of(config, **extra):
    live = copy.deepcopy(config)
    live["metadata"]["annotations"] = {LAST_APPLIED: last_applied(config)}
    live["metadata"]["namespace"] = "payments"
    live["spec"].update(extra)
    return live


def containers(obj):
    return obj["spec"]["template"]["spec"]["containers"]


def test_a_changed_image_patches_only_that_container_field():
    live = live_of(DEPLOYMENT, revisionHistoryLimit=10)
    new = copy.deepcopy(DEPLOYMENT)
    containers(new)[0]["image"] = "x:2"
    patch = client_side_apply_patch(new, live)
    assert patch["spec"] == {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "checkout"}],
        "containers": [{"name": "checkout", "image": "x:2"}]}}}
    assert json.loads(patch["metadata"]["annotations"][LAST_APPLIED]) == json.loads(
        last_applied(new))
    # Fields only the server set (defaults) are left alone.
    assert strategic_merge(live, patch)["spec"]["revisionHistoryLimit"] == 10


def test_an_entry_removed_from_the_config_is_deleted_by_merge_key():
    live = live_of(DEPLOYMENT)
    new = copy.deepcopy(DEPLOYMENT)
    containers(new)[0]["env"] = [{"name": "MODE", "value": "live"}]
    patch = client_side_apply_patch(new, live)
    env = patch["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DEBUG", "$patch": "delete"} in env
    assert patch["spec"]["template"]["spec"]["containers"][0]["$setElementOrder/env"] == [
        {"name": "MODE"}]
    assert containers(strategic_merge(live, patch))[0]["env"] == [
        {"name": "MODE", "value": "live"}]


def test_a_field_removed_from_the_config_is_nulled_but_server_fields_stay():
    live = live_of(DEPLOYMENT, progressDeadlineSeconds=600)
    new = copy.deepcopy(DEPLOYMENT)
    del new["spec"]["replicas"]
    patch = client_side_apply_patch(new, live)
    assert patch["spec"] == {"replicas": None}
    merged = strategic_merge(live, patch)
    assert "replicas" not in merged["spec"] and merged["spec"]["progressDeadlineSeconds"] == 600


def test_switching_strategy_retains_only_the_new_keys():
    live = live_of(DEPLOYMENT, strategy={"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%"}})
    new = copy.deepcopy(DEPLOYMENT)
    new["spec"]["strategy"] = {"type": "Recreate"}
    patch = client_side_apply_patch(new, live)
    assert patch["spec"]["strategy"] == {"type": "Recreate", "$retainKeys": ["type"]}
    assert strategic_merge(live, patch)["spec"]["strategy"] == {"type": "Recreate"}


def test_an_unchanged_config_sends_an_empty_patch():
    live = live_of(DEPLOYMENT)
    patch = client_side_apply_patch(DEPLOYMENT, live)
    assert patch == {}


def test_lists_without_a_merge_key_are_replaced_whole():
    config = copy.deepcopy(DEPLOYMENT)
    containers(config)[0]["args"] = ["--a", "--b"]
    live = live_of(config)
    new = copy.deepcopy(config)
    containers(new)[0]["args"] = ["--a"]
    patch = client_side_apply_patch(new, live)
    assert patch["spec"]["template"]["spec"]["containers"][0]["args"] == ["--a"]


def test_last_applied_is_gos_json():
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
              "data": {"html": "<b>&</b>", "z": "1", "a": "é"}}
    assert last_applied(config) == (
        '{"apiVersion":"v1","data":{"a":"é","html":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e",'
        '"z":"1"},"kind":"ConfigMap","metadata":{"annotations":{},"name":"a"}}\n')
