"""Stories 2 and 3: request, two approvals, then the team's own `kubectl apply` (or
`kubectl delete`) is admitted, once. A Deployment image change, a ConfigMap change and a
Deployment DELETE, each refused before its approvals and after its use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .stories import CONTROLLER, Gate, configmap, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story


def phase(gate: Gate, ns: str, name: str) -> str:
    return str((gate.approval(ns, name).get("status") or {}).get("phase") or "")


def nonce_of(approval: dict) -> str:
    import base64
    return json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]


def wait_used(gate: Gate, ns: str, name: str) -> None:
    """The operator saw the change persisted: Applied, and the nonce in the ledger."""
    wait_for(lambda: phase(gate, ns, name) == "Applied", f"{name} Applied", timeout=60)
    nonce = nonce_of(gate.approval(ns, name))
    wait_for(lambda: nonce in ((gate.get("configmap", f"changegate-ledger-{nonce[0]}",
                                         CONTROLLER) or {}).get("data") or {}),
             f"the nonce of {name} in the ledger", timeout=30)


def image(gate: Gate, ns: str, name: str = "checkout") -> str:
    return gate.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][0]["image"]


def test_an_approved_change_is_admitted_once(gate: Gate, tmp_path: Path):
    ns = gate.namespace("s2-approved", deployment("checkout", "1.41.0"))
    v1 = write_manifest(tmp_path / "v1.yaml", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))

    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-2001")
    assert req.rc == 0, req.text
    assert "changeapproval/chg-2001-deployment-checkout" in req.out
    assert f"changegate approve --record CHG-2001 -n {ns}" in req.out
    ca = gate.approval(ns, "chg-2001-deployment-checkout")
    assert ca["spec"]["requestedBy"] == "alice"

    # Requested is not approved: the API server refuses, naming the approval, 0/2 and its
    # record; the Deployment stays as it was.
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: approvals_insufficient" in r.err
    line = r.machine_line()
    assert (line["from"], line["to"]) == (ca["spec"]["fromDigest"], ca["spec"]["toDigest"])
    assert (line["approvals"], line["record"]) == ("0/2", "CHG-2001")
    assert image(gate, ns).endswith(":1.41.0")

    gate.approve("CHG-2001", ns, "bob")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: approvals_insufficient" in r.err
    line = r.machine_line()
    assert (line["approvals"], line["record"]) == ("1/2", "CHG-2001")
    assert "next: ask another approver: changegate approve chg-2001-deployment-checkout" in r.err
    assert image(gate, ns).endswith(":1.41.0")

    gate.approve("CHG-2001", ns, "carol")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text
    assert "deployment.apps/checkout configured" in r.out
    assert image(gate, ns).endswith(":1.42.0")
    logged = gate.decision(namespace=ns, name="checkout", decision="allowed", reason="approved")
    assert logged["approval"] == "chg-2001-deployment-checkout"
    assert logged["approvers"] == ["bob", "carol"]
    assert logged["toDigest"] == ca["spec"]["toDigest"]
    wait_used(gate, ns, "chg-2001-deployment-checkout")

    # A different change brings the Deployment back to exactly CHG-2001's fromDigest
    # (an approved rollback, applied with `changegate apply`)...
    req = gate.changegate("alice", "request", "-f", str(v1), "-n", ns, "--record", "CHG-2002")
    assert req.rc == 0, req.text
    gate.approve("CHG-2002", ns)
    done = gate.changegate("alice", "apply", "chg-2002-deployment-checkout", "-n", ns)
    assert done.rc == 0, done.text
    assert image(gate, ns).endswith(":1.41.0")
    assert gate.live_digest("deployment", "checkout", ns) == ca["spec"]["fromDigest"]
    before = gate.get("deployment", "checkout", ns)["metadata"]["resourceVersion"]

    # ...and replaying the approved manifest is refused: each approval is used once.
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: approval_used" in r.err
    assert r.machine_line()["record"] == "CHG-2001"
    assert gate.get("deployment", "checkout", ns)["metadata"]["resourceVersion"] == before
    assert image(gate, ns).endswith(":1.41.0")


def test_a_configmap_change_and_a_deployment_delete_under_one_record(gate: Gate,
                                                                     tmp_path: Path):
    part = {"app.kubernetes.io/part-of": "shop"}
    settings = {"PAYMENT_TIMEOUT_MS": "2500", "FEATURE_ONE_CLICK": "true"}
    ns = gate.namespace("s3-configmap", configmap("checkout-config", settings, part),
                        deployment("legacy", "0.9.0", labels=part))
    v1 = write_manifest(tmp_path / "v1.yaml", configmap("checkout-config", settings, part))
    # The release: the ConfigMap changes, the legacy Deployment is no longer in it.
    changed = {**settings, "PAYMENT_TIMEOUT_MS": "250"}
    v2 = write_manifest(tmp_path / "v2.yaml", configmap("checkout-config", changed, part))

    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-3001",
                          "--prune", "-l", "app.kubernetes.io/part-of=shop")
    assert req.rc == 0, req.text
    assert "changeapproval/chg-3001-configmap-checkout-config" in req.out
    assert "changeapproval/chg-3001-deployment-legacy" in req.out
    delete = gate.approval(ns, "chg-3001-deployment-legacy")["spec"]
    assert (delete["operation"], delete["toDigest"]) == ("DELETE", "none")

    # Before the approvals: both refused, both objects as they were.
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1 and "configmaps.changegate.io" in r.err, r.text
    assert r.machine_line()["approvals"] == "0/2"
    d = gate.kubectl("alice", "delete", "deployment", "legacy", "-n", ns)
    assert d.rc == 1, d.text
    assert 'admission webhook "deployments.changegate.io" denied the request' in d.err
    line = d.machine_line()
    assert (line["op"], line["to"], line["approvals"], line["record"]) == (
        "DELETE", "none", "0/2", "CHG-3001")
    assert line["from"] == delete["fromDigest"]
    assert gate.get("configmap", "checkout-config", ns)["data"] == settings
    assert gate.get("deployment", "legacy", ns) is not None

    # `changegate approve` checks each approval by a server-side dry-run of its write,
    # the DELETE included; so do `preflight` and `apply --dry-run`: none may delete anything.
    gate.approve("CHG-3001", ns)
    assert gate.get("deployment", "legacy", ns) is not None
    pre = gate.changegate("alice", "preflight", "--record", "CHG-3001", "-n", ns)
    assert pre.rc == 0, pre.text
    dry = gate.changegate("alice", "apply", "--dry-run", "chg-3001-deployment-legacy", "-n", ns)
    assert dry.rc == 0, dry.text
    assert "dry-run ok" in dry.out
    assert gate.get("deployment", "legacy", ns) is not None, "a dry-run deleted the Deployment"
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text
    assert gate.get("configmap", "checkout-config", ns)["data"] == changed
    d = gate.kubectl("alice", "delete", "deployment", "legacy", "-n", ns, "--wait=false")
    assert d.rc == 0, d.text
    wait_for(lambda: gate.get("deployment", "legacy", ns) is None, "legacy deleted")
    logged = gate.decision(namespace=ns, name="legacy", operation="DELETE", decision="allowed")
    assert (logged["reason"], logged["approval"]) == ("approved", "chg-3001-deployment-legacy")
    wait_used(gate, ns, "chg-3001-configmap-checkout-config")
    wait_used(gate, ns, "chg-3001-deployment-legacy")

    # Back to the old settings by an approved change, then the replay is refused.
    req = gate.changegate("alice", "request", "-f", str(v1), "-n", ns, "--record", "CHG-3002")
    assert req.rc == 0, req.text
    gate.approve("CHG-3002", ns)
    done = gate.changegate("alice", "apply", "chg-3002-configmap-checkout-config", "-n", ns)
    assert done.rc == 0, done.text
    assert gate.get("configmap", "checkout-config", ns)["data"] == settings
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    assert "reason: approval_used" in r.err
    assert gate.get("configmap", "checkout-config", ns)["data"] == settings


def _sign_as(gate: Gate, who: str, ns: str, name: str) -> None:
    """`who` appends a signature with plain kubectl (what `changegate approve` sends, minus
    its review and its own dry-run), so the timing below is ours to control."""
    import base64

    from changegate.core.dsse import load_private_key, sign_envelope
    spec = gate.approval(ns, name)["spec"]
    key = load_private_key(gate.keys[who].read_bytes())
    signature = sign_envelope(key, base64.b64decode(spec["statement"]))
    r = gate.kubectl(who, "patch", "changeapproval", name, "-n", ns, "--type=json", "-p",
                     json.dumps([{"op": "add", "path": "/spec/signatures/-",
                                  "value": signature}]))
    assert r.rc == 0, r.text


def test_a_signature_the_watch_delivered_is_not_undone_by_an_older_read_through(
        gate: Gate, tmp_path: Path):
    """The webhook re-lists a namespace's approvals for a denial that a just-created approval
    might turn (the read-through), and reuses that list for a moment. A list taken before
    bob signed must not replace the cache's newer copy of the approval: alice's apply right
    after bob's signature is judged with it (1/2, under its record), not as unsigned."""
    ns = gate.namespace("s2-fresh", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-2101")
    assert req.rc == 0, req.text
    name = "chg-2101-deployment-checkout"
    # Past any reuse of the list `request`'s own dry-run caused (serve reused a list for up to
    # 1 s), a dry-run makes the webhook list the namespace again: the approval, unsigned...
    time.sleep(1.2)
    dry = gate.kubectl("alice", "apply", "-n", ns, "--dry-run=server", "-f", str(v2))
    assert "would DENY" in dry.err, dry.text
    # ...then bob signs, and the watch brings his signature to the cache in milliseconds,
    # well inside the window in which that list is reused.
    _sign_as(gate, "bob", ns, name)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    line = r.machine_line()
    assert (line["approvals"], line["record"]) == ("1/2", "CHG-2101"), r.err
    assert "reason: approvals_insufficient" in r.err


def test_a_requested_change_waiting_for_approvals_is_denied_naming_its_approval(
        gate: Gate, tmp_path: Path):
    ns = gate.namespace("s2-waiting", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-2201")
    assert req.rc == 0, req.text
    wait_for(lambda: gate.decisions(namespace=ns, name="chg-2201-deployment-checkout"),
             "the approval admitted")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 1, r.text
    line = r.machine_line()
    assert (line["approvals"], line["record"]) == ("0/2", "CHG-2201"), r.err
    assert "reason: approvals_insufficient" in r.err
    assert "next: ask another approver: changegate approve chg-2201-deployment-checkout" \
        in r.err
