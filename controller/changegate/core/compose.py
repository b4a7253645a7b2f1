"""Compose ChangeApproval objects: what `changegate request` creates and approvers sign.

Pure: the caller supplies the clock, the digests and the keys.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from changegate.core.dsse import PrivateKey, sign_envelope
from changegate.core.names import API_VERSION, KIND
from changegate.core.statement import build_statement, format_time


def approval_name(record: str, kind: str, name: str) -> str:
    """A DNS-1123 name such as ``chg-1234-deployment-checkout`` (<= 63 characters)."""
    raw = f"{record}-{kind}-{name}".lower()
    return re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:63].rstrip("-")


def change_approval(*, namespace: str, name: str, cluster: str, target: Mapping[str, str],
                    operation: str, from_digest: str, to_digest: str, record_id: str,
                    record_url: str | None, requested_by: str, issued_at: datetime,
                    expires_at: datetime, manifest: Mapping[str, Any] | None,
                    nonce: str, rollout: Mapping[str, Any] | None = None,
                    assistance: str | None = None) -> dict[str, Any]:
    """An unsigned ChangeApproval whose spec fields equal its statement's."""
    record: dict[str, str] = {"id": record_id}
    if record_url:
        record["url"] = record_url
    full_target = {**dict(target), "namespace": namespace}
    statement = build_statement(
        cluster=cluster, target=full_target, operation=operation, from_digest=from_digest,
        to_digest=to_digest, change_record=record, requested_by=requested_by,
        issued_at=issued_at, expires_at=expires_at, rollout=rollout, nonce=nonce,
        assistance=assistance)
    spec: dict[str, Any] = {
        "cluster": cluster,
        "target": dict(target),
        "operation": operation,
        "fromDigest": from_digest,
        "toDigest": to_digest,
        "changeRecord": record,
        "requestedBy": requested_by,
        "issuedAt": format_time(issued_at),
        "expiresAt": format_time(expires_at),
        "rollout": dict(rollout or {"strategy": "direct"}),
        "statement": base64.b64encode(statement).decode("ascii"),
        "signatures": [],
    }
    if assistance is not None:
        spec["assistance"] = assistance
    if manifest is not None:
        spec["manifest"] = dict(manifest)
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def statement_bytes(approval: Mapping[str, Any]) -> bytes:
    return base64.b64decode(approval["spec"]["statement"])


def signed(approval: Mapping[str, Any], *keys: PrivateKey) -> dict[str, Any]:
    """A copy of ``approval`` with one more DSSE signature per key."""
    out = {**approval, "spec": {**approval["spec"]}}
    payload = statement_bytes(approval)
    out["spec"]["signatures"] = [*approval["spec"].get("signatures", []),
                                 *(sign_envelope(k, payload) for k in keys)]
    return out


def manifest_for(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The reviewable manifest: the object without what the server stamps on every write."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("managedFields", "resourceVersion", "generation", "creationTimestamp",
                         "uid", "selfLink")}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}
