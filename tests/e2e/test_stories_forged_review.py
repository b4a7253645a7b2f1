"""Story 10 (issue 18 item 1): a forged AdmissionReview posted straight to the webhook, as
any pod in the cluster could, changes no later decision on the real control plane.

alice asks the API server for the object her change will produce (a server-side dry-run,
admitted with warnings), gives the live Deployment a fresh resourceVersion that no request
has carried yet (a `changegate.io/` annotation: out of the digest, so admitted), reads it,
and posts a review whose old object is the dry-run's result under the live uid and that
resourceVersion. Were the old object's digest remembered by (uid, resourceVersion), her
real, unapproved update would then look like `no_change` and be admitted. It is denied.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from changegate.core.digest import digest

from .stories import Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def post_review(gate: Gate, review: dict[str, Any]) -> dict[str, Any]:
    """POST /validate directly, not through the API server: a client that trusts the
    serving certificate's CA and presents nothing else."""
    context = ssl.create_default_context(cadata=gate.cluster.ca.pair.cert_pem().decode())
    request = urllib.request.Request(
        f"https://127.0.0.1:{gate.port}/validate", data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())["response"]
    return answer


def test_a_forged_review_does_not_let_an_unapproved_update_through(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s10-forged", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "6.6.6"))
    dry = gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-o", "json",
                       "-f", str(v2))
    assert dry.rc == 0, dry.text
    wanted = json.loads(dry.out)
    bump = gate.kubectl("alice", "annotate", "-n", ns, "deployment/checkout",
                        "changegate.io/note=fresh-resource-version")
    assert bump.rc == 0, bump.text
    live = gate.get("deployment", "checkout", ns)
    assert live is not None
    meta = wanted["metadata"]
    meta["uid"] = live["metadata"]["uid"]
    meta["resourceVersion"] = live["metadata"]["resourceVersion"]
    forged = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "operation": "UPDATE", "namespace": ns, "name": "checkout",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": wanted, "oldObject": wanted, "dryRun": False}}
    answer = post_review(gate, forged)
    assert answer["allowed"] is True  # old == new: the forgery itself gates nothing
    assert answer["auditAnnotations"]["decision"] == "allowed:no_change"

    real = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))

    assert real.rc == 1, real.text
    assert "  reason: no_approval" in real.err
    line = real.machine_line()
    # The forgery named exactly the state alice's write produces: the attack was real.
    assert line["to"] == digest(wanted) != line["from"]
    after = gate.get("deployment", "checkout", ns)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.41.0")
