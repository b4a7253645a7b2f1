"""Story 5: the guards around the gate. A person's scale-down is refused (the autoscaler's
identity is never sent to the webhook); a tier-1 namespace cannot be un-labelled or
loosened except by a policy admin.
"""

from __future__ import annotations

import json

from .stories import HPA_USER, POLICY_ADMINS, Gate, deployment

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def replicas(gate: Gate, ns: str) -> int:
    return int(gate.get("deployment", "checkout", ns)["spec"]["replicas"])


def test_a_persons_scale_down_is_refused(gate: Gate):
    ns = gate.namespace("s5-scale", deployment("checkout", "1.41.0", replicas=3))
    r = gate.kubectl("alice", "scale", "deployment/checkout", "--replicas=2", "-n", ns)
    assert r.rc == 1, f"the scale-down was admitted: {r.text}"
    assert 'admission webhook "scale.changegate.io" denied the request' in r.err
    assert "reason: scale_down" in r.err
    assert "change spec.replicas through an approval" in r.err
    assert "changegate break-glass --reason ... scale deployment/checkout" in r.err
    assert replicas(gate, ns) == 3
    zero = gate.kubectl("alice", "scale", "deployment/checkout", "--replicas=0", "-n", ns)
    assert zero.rc == 1 and "reason: scale_down" in zero.err, zero.text
    assert replicas(gate, ns) == 3


def test_a_persons_scale_from_one_to_zero_is_refused(gate: Gate):
    """autoscaling/v1 Scale omits spec.replicas when it is 0 (`spec: {}`)."""
    ns = gate.namespace("s5-zero", deployment("checkout", "1.41.0", replicas=1))
    r = gate.kubectl("alice", "scale", "deployment/checkout", "--replicas=0", "-n", ns)
    assert r.rc == 1, f"the scale to zero was admitted: {r.text}"
    assert "reason: scale_down" in r.err
    assert replicas(gate, ns) == 1


def test_scale_ups_and_the_autoscaler_never_reach_the_webhook(gate: Gate):
    ns = gate.namespace("s5-hpa", deployment("checkout", "1.41.0", replicas=3))
    calls = gate.calls("scale.changegate.io")
    up = gate.kubectl("alice", "scale", "deployment/checkout", "--replicas=4", "-n", ns)
    assert up.rc == 0, up.text
    # As the HPA controller's service account (impersonated by admin; system:masters only
    # so that kubectl may read the Deployment first: matchConditions look at the username).
    hpa = gate.kubectl("admin", "scale", "deployment/checkout", "--replicas=1", "-n", ns,
                       f"--as={HPA_USER}", "--as-group=system:masters")
    assert hpa.rc == 0, hpa.text
    assert replicas(gate, ns) == 1
    assert gate.calls("scale.changegate.io") == calls, "the webhook was called"
    # A person's scale-down is sent to it (the chart's matchConditions), and refused.
    down = gate.kubectl("alice", "scale", "deployment/checkout", "--replicas=0", "-n", ns)
    assert down.rc == 1 and "reason: scale_down" in down.err, down.text
    assert gate.calls("scale.changegate.io") == calls + 1
    assert gate.decision(namespace=ns, name="checkout", subResource="scale", user="alice")


def test_only_a_policy_admin_may_take_a_namespace_out_of_tier_1(gate: Gate):
    ns = gate.namespace("s5-namespace", deployment("checkout", "1.41.0"))

    # dana may edit namespaces (RBAC), but is no policy admin.
    r = gate.kubectl("dana", "label", "namespace", ns, "tier-")
    assert r.rc == 1, r.text
    assert 'admission webhook "namespaces.changegate.io" denied the request' in r.err
    assert "reason: namespace_guard" in r.err
    assert "the namespace would no longer match tierSelector" in r.err
    loosen = gate.kubectl("dana", "annotate", "namespace", ns,
                          "changegate.io/enforcement=warn")
    assert loosen.rc == 1 and "moves from deny to warn" in loosen.err, loosen.text
    meta = gate.get("namespace", ns, None)["metadata"]
    assert meta["labels"]["tier"] == "tier-1"
    assert "changegate.io/enforcement" not in (meta.get("annotations") or {})
    # Tightening is anyone's (with RBAC): it needs no webhook verdict beyond "not loosened".
    tighter = gate.kubectl("dana", "annotate", "namespace", ns,
                           "changegate.io/required-approvals=3")
    assert tighter.rc == 0, tighter.text

    as_admin = ("--as=pat", f"--as-group={POLICY_ADMINS}")
    ok = gate.kubectl("admin", "label", "namespace", ns, "tier-", *as_admin)
    assert ok.rc == 0, ok.text
    assert "tier" not in (gate.get("namespace", ns, None)["metadata"].get("labels") or {})
    logged = gate.decision(name=ns, resource="namespaces", user="pat")
    assert (logged["decision"], logged["reason"]) == ("allowed", "policy_change")
    # No longer tier-1: changes there are not gated any more.
    free = gate.kubectl("alice", "set", "image", "deployment/checkout",
                        "checkout=registry.example/checkout:1.42.0", "-n", ns)
    assert free.rc == 0, free.text


def test_a_namespace_that_was_never_tier_1_is_not_guarded(gate: Gate):
    ns = gate.namespace("s5-free", tier1=False)
    calls = gate.calls("namespaces.changegate.io")
    r = gate.kubectl("dana", "label", "namespace", ns, "team=payments")
    assert r.rc == 0, r.text
    assert gate.calls("namespaces.changegate.io") == calls
    labels = json.loads(gate.kubectl("admin", "get", "namespace", ns, "-o", "json").out)[
        "metadata"]["labels"]
    assert labels["team"] == "payments"
