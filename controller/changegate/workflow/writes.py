"""The write a tool sends for one object, and its server-side dry-run.

`request` dry-runs the write the requester's tool will send, so the manifest it records
is what the API server will store (defaults, mutating webhooks and all); `approve` and
`apply` dry-run the write `changegate apply` will send and check that it still produces
the signed ``toDigest``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from changegate.core.errors import ChangeGateError
from changegate.kube import (
    APPLY_PATCH,
    JSON,
    STRATEGIC_MERGE_PATCH,
    Kube,
    Response,
    object_path,
)

# Stamped by the API server on every write; never sent back.
SERVER_FIELDS = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid",
                 "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
DENY_PREFIX = "changegate: would DENY"

# How an object gets written. Recorded on the ChangeApproval (annotation changegate.io/write)
# so `changegate apply` sends the same kind of request the requester dry-ran.
CLIENT_SIDE = "client-side-apply"
SERVER_SIDE = "server-side-apply"
AS_RETURNED = "as-returned"
RESTART = "restart"
@dataclass(frozen=True)
class Write:
    verb: str  # create | patch | apply | replace | delete: for messages
    method: str
    path: str
    body: Any
    content_type: str = JSON
    query: Mapping[str, str] = field(default_factory=dict)

    def send(self, api: Kube, *, dry_run: bool) -> Response:
        query = dict(self.query)
        body = self.body
        if dry_run:
            query["dryRun"] = "All"
            if isinstance(body, dict) and body.get("kind") == "DeleteOptions":
                # A DELETE with a body takes its options from the body alone: the API
                # server ignores the query's dryRun then, and would really delete.
                body = {**body, "dryRun": ["All"]}
        return api.call(self.method, self.path, query=query, body=body,
                        content_type=self.content_type)


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    m = meta(obj)
    return (str(obj.get("apiVersion", "")), str(obj.get("kind", "")),
            str(m.get("namespace", "")), str(m.get("name", "")))


def stripped(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without what the server stamps, ready to send."""
    out = copy.deepcopy(dict(manifest))
    out.pop("status", None)
    m = out.setdefault("metadata", {})
    for key in SERVER_FIELDS:
        m.pop(key, None)
    return out


@dataclass(frozen=True)
class KubectlApply:
    """Client-side apply, computed by kubectl itself (`kubectl apply -f -`): the three-way
    strategic merge patch depends on patch metadata of every field of every kind, which
    only kubectl (and the API server's OpenAPI) keeps current."""

    verb: str  # create | patch: whether the object exists now, for messages
    path: str
    config: Mapping[str, Any]
    method = "APPLY"

    def send(self, api: Kube, *, dry_run: bool) -> Response:
        args = ["apply", "-f", "-", "-o", "json"] + (["--dry-run=server"] if dry_run else [])
        out, warnings = api.kubectl(args, stdin=json.dumps(self.config).encode())
        try:
            body = json.loads(out)
        except ValueError as exc:
            raise ChangeGateError(f"kubectl apply {self.path}: the output is not JSON") from exc
        return Response(status=200, body=body, warnings=warnings)


def config_write(config: Mapping[str, Any], live: Mapping[str, Any] | None, mode: str, *,
                 field_manager: str = "kubectl", force: bool = False) -> Write | KubectlApply:
    """The write `kubectl apply` (client- or server-side) sends for ``config``."""
    api_version, kind, ns, name = identity(config)
    if mode == SERVER_SIDE:
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        return Write("apply", "PATCH", object_path(api_version, kind, ns, name),
                     stripped(config), APPLY_PATCH, query)
    if mode != CLIENT_SIDE:
        raise ChangeGateError(f"unknown write mode {mode!r}")
    return KubectlApply("create" if live is None else "patch",
                        object_path(api_version, kind, ns, name), config)


def restart_write(live: Mapping[str, Any], at: str) -> Write:
    """What `kubectl rollout restart` sends, with the time fixed in advance."""
    api_version, kind, ns, name = identity(live)
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
    return Write("patch", "PATCH", object_path(api_version, kind, ns, name), body,
                 STRATEGIC_MERGE_PATCH, {"fieldManager": "kubectl-rollout"})


def manifest_write(manifest: Mapping[str, Any], live: Mapping[str, Any] | None, mode: str
                   ) -> Write | KubectlApply:
    """How `changegate apply` writes an approved manifest.

    A client-side-apply manifest carries its config in the last-applied annotation: the
    same `kubectl apply` keeps later `kubectl apply` runs consistent.
    Anything else is written whole (an update guarded by the live resourceVersion), so the
    stored object is exactly the signed manifest.
    """
    api_version, kind, ns, name = identity(manifest)
    raw = meta(manifest).get("annotations", {}).get(LAST_APPLIED)
    if mode == CLIENT_SIDE and isinstance(raw, str):
        try:
            config = json.loads(raw)
        except ValueError:
            config = None
        if isinstance(config, dict):
            config.setdefault("metadata", {})["namespace"] = ns
            return config_write(config, live, CLIENT_SIDE)
    body = stripped(manifest)
    if live is None:
        return Write("create", "POST", object_path(api_version, kind, ns), body, JSON,
                     {"fieldManager": "changegate"})
    body["metadata"]["resourceVersion"] = meta(live).get("resourceVersion")
    body["metadata"]["uid"] = meta(live).get("uid")
    return Write("replace", "PUT", object_path(api_version, kind, ns, name), body, JSON,
                 {"fieldManager": "changegate"})


def delete_write(live: Mapping[str, Any]) -> Write:
    """Delete exactly the object that was checked: uid and resourceVersion preconditions."""
    api_version, kind, ns, name = identity(live)
    m = meta(live)
    body = {"apiVersion": "v1", "kind": "DeleteOptions",
            "preconditions": {"uid": m.get("uid"), "resourceVersion": m.get("resourceVersion")}}
    return Write("delete", "DELETE", object_path(api_version, kind, ns, name), body)


def dry_run(api: Kube, write: Write | KubectlApply
            ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The object the write would store (None for a delete) and the answer's warnings."""
    answer = write.send(api, dry_run=True)
    if write.method == "DELETE":
        return None, answer.warnings
    if not isinstance(answer.body, dict):
        raise ChangeGateError(f"dry-run of {write.path}: the answer is not an object")
    return answer.body, answer.warnings


def denials(warnings: Sequence[str]) -> list[str]:
    """The `changegate: would DENY` warnings a webhook puts on a dry-run it would refuse."""
    return [w for w in warnings if w.startswith(DENY_PREFIX)]
