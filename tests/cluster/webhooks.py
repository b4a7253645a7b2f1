"""Registering a validating webhook with the test control plane and knowing when it is live.

A ValidatingWebhookConfiguration takes effect asynchronously: the API server's admission
plugin learns about it from an informer, so for a moment after `kubectl apply` requests are
admitted without calling the webhook. We probe until a request actually reaches it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

# STABLE histogram in k8s.io/apiserver/pkg/admission/metrics: one observation per webhook
# call, whatever the verdict, so it tells "the API server called it" without the webhook's
# cooperation (a denying, allowing or failing webhook all count).
_CALLS = re.compile(
    r'^apiserver_admission_webhook_admission_duration_seconds_count\{(?P<labels>[^}]*)\} '
    r'(?P<value>\S+)$', re.M,
)


def webhook_calls(cluster: Any, name: str) -> int:
    """How many times the API server has called the webhook entry `name` (all operations)."""
    metrics = cluster.kubectl("admin", "get", "--raw", "/metrics", check=True).stdout
    total = 0.0
    for m in _CALLS.finditer(metrics):
        if f'name="{name}"' in m["labels"].split(","):
            total += float(m["value"])
    return int(total)


def probe_configmap(namespace: str, name: str = "changegate-probe") -> dict[str, Any]:
    """A harmless object to dry-run create in a namespace the webhook covers."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": {"probe": "1"}}


def register_webhook(
    cluster: Any, vwc: dict[str, Any], *, probe: dict[str, Any], webhook: str | None = None,
    user: str = "admin", timeout: float = 60.0,
) -> None:
    """Apply the ValidatingWebhookConfiguration `vwc` and return once the entry `webhook`
    (default: the first) is called for a server-side dry-run create of `probe` as `user`.

    Dry-run needs `sideEffects: None|NoneOnDryRun` on the entry, which every changegate entry
    has; the probe is never stored, whatever the webhook answers.
    """
    name = webhook or vwc["webhooks"][0]["name"]
    cluster.apply(vwc)
    body = json.dumps(probe)
    deadline = time.monotonic() + timeout
    while True:
        before = webhook_calls(cluster, name)
        # The verdict does not matter (a deny is as good a sign as an allow), only the call.
        cluster.kubectl(user, "create", "--dry-run=server", "-f", "-", input=body)
        if webhook_calls(cluster, name) > before:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"webhook {name} not called within {timeout:.0f} s of applying "
                               f"{vwc['metadata']['name']}")
        time.sleep(0.5)


def unregister_webhook(
    cluster: Any, vwc: dict[str, Any], *, probe: dict[str, Any], webhook: str | None = None,
    user: str = "admin", timeout: float = 60.0,
) -> None:
    """Delete the configuration and return once the API server stops calling the entry, so a
    stopped webhook with failurePolicy Fail cannot break whatever runs next."""
    name = webhook or vwc["webhooks"][0]["name"]
    cluster.kubectl("admin", "delete", "validatingwebhookconfiguration",
                    vwc["metadata"]["name"], "--ignore-not-found", check=True)
    body = json.dumps(probe)
    deadline = time.monotonic() + timeout
    while True:
        before = webhook_calls(cluster, name)
        cluster.kubectl(user, "create", "--dry-run=server", "-f", "-", input=body)
        if webhook_calls(cluster, name) == before:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"webhook {name} still called {timeout:.0f} s after deleting "
                               f"{vwc['metadata']['name']}")
        time.sleep(0.5)
