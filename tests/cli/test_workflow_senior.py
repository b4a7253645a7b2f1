"""The requester's and the approvers' side of SPEC §6a: `request --assisted`, what `status`
and `approve` say about assistance and the senior signature, and the declaration prompt."""

from __future__ import annotations

import base64
import json

import yaml

from changegate.cli import workflow
from tests.cli.conftest import NS
from tests.support import key

DEP = "chg-1234-deployment-checkout"


def senior_trust() -> str:
    """bob and carol approve in payments; erin is senior everywhere."""
    return yaml.safe_dump({"approvers": [
        {"name": "bob", "namespaces": [NS], "keys": [key("bob").public.pem()]},
        {"name": "carol", "namespaces": [NS], "keys": [key("carol").public.pem()]},
        {"name": "erin", "namespaces": ["*"], "senior": True,
         "keys": [key("erin", "p256").public.pem()]},
        {"name": "alice", "role": "requester", "keys": [key("alice").public.pem()]},
    ]})


def use_trust(kube, text: str) -> None:
    kube.trust_text = text  # what the fake's admission step (the real decide) reads
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "changegate-trust", "namespace": "changegate"},
              "data": {"approvers.yaml": text}})


def require_declaration(kube) -> None:
    info = kube.get("configmaps", "changegate", "changegate-info")
    info["data"]["requireAssistanceDeclaration"] = "true"
    kube.put(info)
    kube.policy_text += "requireAssistanceDeclaration: true\n"


def test_request_assisted_ai_is_signed_shown_and_waits_for_a_senior(kube, cg, manifests, keys):
    use_trust(kube, senior_trust())
    asked = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234",
               "--assisted", "ai")
    assert asked.code == 0, asked.err
    assert "assistance ai" in asked.out and "one of them senior" in asked.out
    spec = kube.get("changeapprovals", NS, DEP)["spec"]
    assert spec["assistance"] == "ai"
    assert json.loads(base64.b64decode(spec["statement"]))["predicate"]["assistance"] == "ai"
    for who in ("bob", "carol"):
        signed = cg(who, "approve", "--record", "CHG-1234", "--key", keys[who], "--yes")
        assert signed.code == 0, signed.err
        assert "Assistance:    ai (AI-assisted: needs a senior signature)" in signed.out
        assert "still waits for a senior signature (yours is not one)" in signed.out
    status = cg("dana", "status", DEP).out
    assert "Assistance:    ai (AI-assisted: needs a senior signature)" in status
    assert "senior_approval_required: 1 senior signature missing" in status
    assert "could sign in payments: erin" in status
    refused = cg("dana", "apply", DEP)
    assert refused.code == 2 and "senior_approval_required" in refused.err
    senior = cg("erin", "approve", "--record", "CHG-1234", "--key", keys["erin"], "--yes")
    assert senior.code == 0, senior.err
    assert "yours is the senior signature this change waits for" in senior.out
    assert "Ready:" in cg("dana", "status", DEP).out
    applied = cg("dana", "apply", DEP)
    assert applied.code == 0, applied.err


def test_a_declaration_the_policy_requires_is_refused_off_a_terminal(kube, cg, manifests):
    require_declaration(kube)
    refused = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234")
    assert refused.code == 2
    assert "--assisted none or --assisted ai" in refused.err
    assert kube.get("changeapprovals", NS, DEP) is None
    declared = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234",
                  "--assisted", "none")
    assert declared.code == 0, declared.err
    assert kube.get("changeapprovals", NS, DEP)["spec"]["assistance"] == "none"


def test_a_declaration_the_policy_requires_is_asked_for_on_a_terminal(kube, cg, manifests,
                                                                        monkeypatch):
    require_declaration(kube)
    monkeypatch.setattr(workflow, "interactive", lambda: True)
    asked = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234",
               input="maybe\nai\n")
    assert asked.code == 0, asked.err
    assert "Was this change written with AI assistance?" in asked.err
    assert kube.get("changeapprovals", NS, DEP)["spec"]["assistance"] == "ai"


def test_without_the_policy_key_nothing_is_asked_and_nothing_declared(kube, cg, manifests):
    asked = cg("alice", "request", "-f", str(manifests), "--record", "CHG-1234")
    assert asked.code == 0 and "assistance" not in asked.out
    assert "assistance" not in kube.get("changeapprovals", NS, DEP)["spec"]
    assert "Assistance:    not declared" in cg("dana", "status", DEP).out
