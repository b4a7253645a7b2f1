"""The admission.k8s.io/v1 AdmissionReview envelope: read a request, write a response.

``object`` and ``oldObject`` stay plain dicts: the digest must see exactly what the API
server sent, not what a model would make of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from changegate.core.errors import ReviewError

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionRequest:
    """One request, read once, never changed."""

    uid: str
    group: str
    version: str
    kind: str
    resource: str
    sub_resource: str
    namespace: str
    name: str
    operation: str
    username: str
    groups: frozenset[str]
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool
    user_extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)
    # request.resource.group: what the request is FOR. Route by this, never by the
    # kind: deployments/scale arrives as kind autoscaling/v1 Scale on apps/deployments.
    resource_group: str = ""

    def __repr__(self) -> str:
        return (f"AdmissionRequest({self.operation} {self.resource} "
                f"{self.namespace}/{self.name} by {self.username!r}, uid={self.uid!r})")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def live_uid(self) -> str:
        """uid of the object the change starts from; ``none`` for CREATE."""
        if self.old_object is None:
            return "none"
        return str(self.old_object.get("metadata", {}).get("uid") or "none")


def _str(req: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = req.get(key)
    if type(value) is str and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise ReviewError(f"request.{key} is missing or not a string")


def _obj(req: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = req.get(key)
    if value is not None and type(value) is not dict:
        raise ReviewError(f"request.{key} is not an object")
    return value


def parse_review(doc: Any) -> AdmissionRequest:
    """Raises ReviewError (the webhook answers HTTP 400) for anything malformed."""
    if type(doc) is not dict:
        raise ReviewError("body is not a JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected apiVersion {API_VERSION}, kind AdmissionReview")
    req = doc.get("request")
    if type(req) is not dict:
        raise ReviewError("request is missing")
    kind = req.get("kind")
    resource = req.get("resource")
    user = req.get("userInfo")
    if type(kind) is not dict or type(resource) is not dict or type(user) is not dict:
        raise ReviewError("request.kind, request.resource and request.userInfo are required")
    operation = _str(req, "operation")
    if operation not in OPERATIONS:
        raise ReviewError(f"request.operation {operation!r} is unknown")
    groups = user.get("groups") or []
    if type(groups) is not list or any(type(g) is not str for g in groups):
        raise ReviewError("request.userInfo.groups is not a list of strings")
    username = user.get("username", "")
    if type(username) is not str:
        raise ReviewError("request.userInfo.username is not a string")
    extra = user.get("extra")
    return AdmissionRequest(
        uid=_str(req, "uid"),
        group=str(kind.get("group") or ""),
        version=str(kind.get("version") or ""),
        kind=str(kind.get("kind") or ""),
        resource=str(resource.get("resource") or ""),
        sub_resource=str(req.get("subResource") or ""),
        namespace=_str(req, "namespace", required=False),
        name=_str(req, "name", required=False),
        operation=operation,
        username=username,
        groups=frozenset(groups),
        object=_obj(req, "object"),
        old_object=_obj(req, "oldObject"),
        dry_run=bool(req.get("dryRun")),
        user_extra=extra if type(extra) is dict else NO_EXTRA,
        resource_group=str(resource.get("group") or ""),
    )


def review_uid(doc: Any) -> str | None:
    """The request uid, if one can be read, so even a failed answer names its request."""
    if isinstance(doc, dict) and isinstance(doc.get("request"), dict):
        uid = doc["request"].get("uid")
        return uid if isinstance(uid, str) else None
    return None


def build_response(uid: str, *, allowed: bool, message: str = "", code: int = 403,
                   reason: str = "", warnings: tuple[str, ...] = (),
                   audit: Mapping[str, str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": reason or "Forbidden"}
    if warnings:
        response["warnings"] = list(warnings)
    if audit:
        response["auditAnnotations"] = dict(audit)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
