"""Two findings of the outside attack review (issue 18), on the real API server:

- junk signatures are refused at the door (SPEC §4 rule 1): appending a signature that does
  not verify, or one by a key no approver holds, is denied, so nobody can spoil an approval
  or fill its sixteen signature slots; the approvers can still sign it afterwards;
- a `kubectl rollout restart` of an object that once had an approval (used, kept for 30
  days) is explained as a restart, naming `changegate request --restart`, not by the used
  approval.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from changegate.core.dsse import PAYLOAD_TYPE, generate, load_private_key, pae

from .stories import Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

APPROVAL = "chg-1801-deployment-checkout"


def _append(gate: Gate, ns: str, who: str, signature: dict[str, str]):
    patch = [{"op": "add", "path": "/spec/signatures/-", "value": signature}]
    return gate.kubectl(who, "patch", "changeapproval", APPROVAL, "-n", ns, "--type=json",
                        "-p", json.dumps(patch))


def test_junk_signatures_are_refused_at_the_door_and_spoil_nothing(gate: Gate,
                                                                   tmp_path: Path):
    ns = gate.namespace("s18-junk", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    req = gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record", "CHG-1801")
    assert req.rc == 0, req.text
    approval = gate.approval(ns, APPROVAL)
    statement = base64.b64decode(approval["spec"]["statement"])

    # bob's keyid (as the trust store names it) with bytes that are no signature over this
    # statement.
    bob = load_private_key(gate.keys["bob"].read_bytes())
    forged = {"keyid": bob.public.keyid, "sig": base64.b64encode(b"\x00" * 64).decode()}
    r = _append(gate, ns, "alice", forged)
    assert r.rc == 1, r.text
    assert 'admission webhook "changeapprovals.changegate.io" denied the request' in r.err
    assert "reason: signature_invalid" in r.err

    # A real signature by a key nobody in the trust store holds.
    stranger = generate()
    unknown = {"keyid": stranger.public.keyid,
               "sig": base64.b64encode(stranger.sign(pae(PAYLOAD_TYPE, statement))).decode()}
    r = _append(gate, ns, "alice", unknown)
    assert r.rc == 1, r.text
    assert "reason: key_untrusted" in r.err
    assert gate.approval(ns, APPROVAL)["spec"].get("signatures") in (None, [])

    # Nothing was spoiled: bob and carol sign as usual and the change goes in.
    gate.approve("CHG-1801", ns, "bob", "carol")
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2))
    assert r.rc == 0, r.text
    assert "deployment.apps/checkout configured" in r.out


def test_a_restart_after_a_used_approval_is_explained_as_a_restart(gate: Gate,
                                                                    tmp_path: Path):
    ns = gate.namespace("s18-restart", deployment("checkout", "1.41.0"))
    v2 = write_manifest(tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))
    assert gate.changegate("alice", "request", "-f", str(v2), "-n", ns, "--record",
                           "CHG-1802").rc == 0
    gate.approve("CHG-1802", ns, "bob", "carol")
    assert gate.kubectl("alice", "apply", "-n", ns, "-f", str(v2)).rc == 0

    # The used approval is still there (kept for the record); a restart is another change.
    r = gate.kubectl("alice", "rollout", "restart", "deployment/checkout", "-n", ns)
    assert r.rc == 1, r.text
    assert "reason: restart_unapproved" in r.err
    assert f"changegate request --restart deployment/checkout -n {ns}" in r.err
    assert "approval_used" not in r.err
