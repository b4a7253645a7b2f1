"""Property tests: the digest's fast path equals RFC 8785, and the view is what SPEC §3 says."""

from __future__ import annotations

import copy
import json

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changegate.core.digest import (
    DEFAULT_IGNORED_ANNOTATIONS,
    MAX_SAFE_INTEGER,
    ViewRules,
    _prune,
    canonical,
    digest,
)
from changegate.core.errors import NotCanonicalError
from tests.support import fixture

json_scalars = (st.none() | st.booleans()
                | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text())
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_canonical_equals_the_rfc8785_reference(value):
    pruned, _ = _prune(value)
    assert canonical(value) == rfc8785.dumps(pruned)


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 100), max_size=8))
def test_key_order_does_not_matter(mapping):
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert canonical(mapping) == canonical(reversed_mapping)


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**20])
def test_integers_outside_the_safe_range_have_no_canonical_form(value):
    with pytest.raises(NotCanonicalError):
        canonical({"n": value})


def deployment():
    return fixture("deployment-update")["request"]["object"]


VOLATILE = ["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
            "ownerReferences", "finalizers"]


@given(st.sampled_from(VOLATILE), st.text(max_size=10))
def test_volatile_metadata_and_status_do_not_change_the_digest(field, value):
    obj = deployment()
    before = digest(obj)
    obj["metadata"][field] = value
    obj["status"] = {"replicas": value}
    assert digest(obj) == before


@given(st.sampled_from([*sorted(DEFAULT_IGNORED_ANNOTATIONS), "changegate.io/anything"]),
       st.text(max_size=20))
def test_ignored_annotations_do_not_change_the_digest(key, value):
    obj = deployment()
    before = digest(obj)
    obj["metadata"].setdefault("annotations", {})[key] = value
    assert digest(obj) == before


def test_policy_can_ignore_more_annotations():
    obj = deployment()
    before = digest(obj)
    obj["metadata"]["annotations"]["example.com/x"] = "1"
    assert digest(obj) != before
    assert digest(obj, ViewRules(["example.com/x"])) == before


def paths(value, prefix=()):
    """Every leaf path of the gated parts of an object."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))
    elif value is not None:
        yield prefix


GATED_PATHS = [p for p in paths(deployment()) if p[0] in ("spec",)] + [
    ("metadata", "labels", "app"), ("metadata", "name"), ("metadata", "namespace")]


@settings(max_examples=200)
@given(st.sampled_from(GATED_PATHS), st.text(min_size=1, max_size=5))
def test_any_gated_field_change_changes_the_digest(path, suffix):
    obj = deployment()
    before = digest(obj)
    target = obj
    for part in path[:-1]:
        target = target[part]
    old = target[path[-1]]
    target[path[-1]] = (f"{old}{suffix}" if isinstance(old, str)
                        else (not old if isinstance(old, bool) else json.dumps(old) + suffix))
    assert digest(obj) != before


def test_pod_template_labels_are_never_ignored():
    obj = deployment()
    before = digest(obj)
    obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "x"
    assert digest(obj) != before


def test_autoscaled_workloads_leave_replicas_out():
    obj = deployment()
    scaled = copy.deepcopy(obj)
    scaled["spec"]["replicas"] = 9
    assert digest(obj) != digest(scaled)
    assert digest(obj, autoscaled=True) == digest(scaled, autoscaled=True)


def test_configmap_view_defaults_and_absent_object():
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "b"}}
    explicit = {**cm, "data": {}, "binaryData": {}, "immutable": False}
    assert digest(cm) == digest(explicit)
    assert digest(None) == "none"


def test_known_digest_is_stable():
    """Pinned: a digest change is a protocol change (every approval in flight breaks)."""
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "checkout-config", "namespace": "payments"},
          "data": {"PAYMENT_TIMEOUT_MS": "2500"}}
    view = {"apiVersion": "v1", "binaryData": {}, "data": {"PAYMENT_TIMEOUT_MS": "2500"},
            "immutable": False, "kind": "ConfigMap",
            "metadata": {"annotations": {}, "labels": {}, "name": "checkout-config",
                         "namespace": "payments"}}
    import hashlib
    assert digest(cm) == "sha256:" + hashlib.sha256(rfc8785.dumps(view)).hexdigest()
