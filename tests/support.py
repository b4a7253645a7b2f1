"""Shared test material: real keys, a real trust store, the shared fixtures, signed approvals."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from changegate.core.compose import change_approval, signed
from changegate.core.digest import digest
from changegate.core.dsse import PrivateKey, generate
from changegate.core.policy import load_policy
from changegate.core.review import parse_review
from changegate.files import build_snapshot

REPO = Path(__file__).resolve().parent.parent
# AdmissionReviews as kube-apiserver sends them (tests/fixtures/README.md), and beside them in
# captured/ what the real API server sent for each case (tests/e2e/test_capture_admission.py).
FIXTURES = REPO / "tests" / "fixtures"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

# tests/fixtures/README.md: allowed without an approval, under the default policy
# (no break-glass group, CREATE gated).
FIXTURE_VERDICTS = {
    "deployment-update": False,
    "deployment-update-dryrun": True,
    "deployment-update-by-gitops": False,
    "deployment-rollout-restart": False,
    "deployment-update-replicas": False,
    "deployment-update-metadata-only": True,
    "deployment-create": False,
    "deployment-delete": False,
    "deployment-break-glass": False,
    "configmap-update": False,
    "configmap-create": False,
    "configmap-delete": False,
}


def key(name: str, algorithm: str = "ed25519") -> PrivateKey:
    """One key per (person, algorithm) for the whole test session."""
    return _key(name, algorithm)


@cache
def _key(name: str, algorithm: str) -> PrivateKey:
    return generate(algorithm)


def trust_yaml(entries: list[dict[str, Any]] | None = None) -> str:
    """bob and carol approve in payments, erin everywhere; alice is a requester key."""
    import yaml

    if entries is None:
        entries = [
            {"name": "bob", "namespaces": ["payments"], "keys": [key("bob").public.pem()]},
            {"name": "carol", "namespaces": ["payments"], "keys": [key("carol").public.pem()]},
            {"name": "erin", "namespaces": ["*"], "keys": [key("erin", "p256").public.pem()]},
            {"name": "frank", "namespaces": ["shipping"], "keys": [key("frank").public.pem()]},
            {"name": "alice", "role": "requester", "namespaces": ["*"],
             "keys": [key("alice").public.pem()]},
            {"name": "dave", "namespaces": ["*"],
             "keys": [key("dave").public.pem(), key("dave2").public.pem()]},
        ]
    return yaml.safe_dump({"approvers": entries})


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def request_of(review: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_review(review)


def approval_for(review: dict[str, Any], *, requested_by: str = "alice", record: str = "CHG-1234",
                 cluster: str = "", issued: datetime = NOW - timedelta(hours=1),
                 lifetime: timedelta = timedelta(hours=4), policy_text: str = "",
                 name: str = "chg-1234", namespace: str | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """An unsigned ChangeApproval that names exactly the change in ``review``."""
    req = review["request"]
    policy = load_policy(policy_text)
    obj, old = req.get("object"), req.get("oldObject")
    kind = req["kind"]["kind"]
    api_version = "apps/v1" if kind == "Deployment" else "v1"
    uid = (old or {}).get("metadata", {}).get("uid", "none") if old else "none"
    fields: dict[str, Any] = dict(
        namespace=namespace or req["namespace"], name=name, cluster=cluster,
        target={"apiVersion": api_version, "kind": kind, "name": req["name"], "uid": uid},
        operation=req["operation"], from_digest=digest(old, policy.view_rules),
        to_digest=digest(obj, policy.view_rules), record_id=record,
        record_url=f"https://itsm.example/{record}", requested_by=requested_by,
        issued_at=issued, expires_at=issued + lifetime, manifest=obj, nonce=str(uuid.uuid4()))
    fields.update(overrides)
    approval = change_approval(**fields)
    approval["metadata"].update(uid=f"uid-{name}", resourceVersion="1")
    return approval


def sign(approval: dict[str, Any], *names: str) -> dict[str, Any]:
    alg = {"erin": "p256"}
    return signed(approval, *(key(n, alg.get(n, "ed25519")) for n in names))


def snapshot(*objects: dict[str, Any], policy: str = "", trust: str | None = None,
             ledger: list[dict[str, Any]] | None = None):  # type: ignore[no-untyped-def]
    return build_snapshot(trust_text=trust_yaml() if trust is None else trust,
                          policy_text=policy, objects=[copy.deepcopy(o) for o in objects],
                          ledger=ledger or [])
