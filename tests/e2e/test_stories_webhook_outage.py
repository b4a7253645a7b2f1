"""Story 7: the webhook process is down. The API server refuses gated changes itself
(failurePolicy Fail), everything ungated goes on, and status updates are never sent to the
webhook. serve is started again at the end, on the same port.
"""

from __future__ import annotations

import json

from .stories import Gate, configmap, deployment

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def test_with_the_webhook_down_gated_changes_fail_closed_and_the_rest_goes_on(gate: Gate):
    gated = gate.namespace("s7-gated", deployment("checkout", "1.41.0"),
                           configmap("checkout-config", {"A": "1"}))
    free = gate.namespace("s7-free", deployment("checkout", "1.41.0"), tier1=False)
    before = gate.get("deployment", "checkout", gated)
    status_calls = gate.calls("deployments.changegate.io")

    gate.stop_serve()
    try:
        r = gate.kubectl("alice", "set", "image", "deployment/checkout",
                         "checkout=registry.example/checkout:1.42.0", "-n", gated)
        assert r.rc == 1, r.text
        assert 'failed calling webhook "deployments.changegate.io"' in r.err
        assert f"https://127.0.0.1:{gate.port}/validate" in r.err
        assert "connection refused" in r.err
        c = gate.kubectl("alice", "create", "configmap", "new-settings", "--from-literal=B=2",
                         "-n", gated)
        assert c.rc == 1 and 'failed calling webhook "configmaps.changegate.io"' in c.err, \
            c.text
        assert gate.get("deployment", "checkout", gated)["metadata"]["resourceVersion"] == \
            before["metadata"]["resourceVersion"]
        assert gate.get("configmap", "new-settings", gated) is None

        # Outside tier-1 nothing depends on the webhook.
        ok = gate.kubectl("alice", "set", "image", "deployment/checkout",
                          "checkout=registry.example/checkout:1.42.0", "-n", free)
        assert ok.rc == 0, ok.text
        ok = gate.kubectl("alice", "create", "configmap", "settings", "--from-literal=A=1",
                          "-n", free)
        assert ok.rc == 0, ok.text
        ok = gate.kubectl("dana", "label", "namespace", free, "team=payments")
        assert ok.rc == 0, ok.text

        # Status is never intercepted: a status write to a gated Deployment goes through
        # (as admin here; in a cluster it is the deployment controller's own write).
        generation = before["metadata"]["generation"]
        st = gate.kubectl("admin", "patch", "deployment", "checkout", "-n", gated,
                          "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"observedGeneration": generation}}))
        assert st.rc == 0, st.text
        # The status subresource is not in the entry's rules: the API server never called it
        # (the failed calls above did count).
        assert gate.calls("deployments.changegate.io") == status_calls + 1
    finally:
        gate.start_serve()

    # Back: the same change is judged by changegate again.
    gate.wait_gated(gated)
    r = gate.kubectl("alice", "set", "image", "deployment/checkout",
                     "checkout=registry.example/checkout:1.42.0", "-n", gated)
    assert r.rc == 1, r.text
    assert "reason: no_approval" in r.err
