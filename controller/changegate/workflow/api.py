"""A thin JSON-over-HTTP seam on top of `kubernetes.client.ApiClient` (built by changegate.kube).

The typed `kubernetes` API methods pick the patch content type themselves and hide the
response headers; the workflow needs both (json-patch and apply-patch bodies, the `Date`
header for the server's clock, the `Warning` headers a webhook answers dry-runs with). So
every call goes through ``Api.call``: explicit method, path, query, body, content type; the
answer is status + JSON + headers, and an error status becomes one readable line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from changegate.core.errors import ChangeGateError
from changegate.core.names import GROUP as CA_GROUP
from changegate.core.names import PLURAL as CA_PLURAL
from changegate.core.names import VERSION as CA_VERSION
from changegate.core.statement import PLURALS

TIMEOUT = 30  # seconds; kubectl's default request timeout is none, but a CLI must not hang
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# RFC 7234 warning: `299 - "text"` (the API server's form); the text is a quoted string.
_WARNING = re.compile(r'^\s*\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"')


class ApiError(ChangeGateError):
    """A non-2xx answer. ``str()`` is the API server's own message, on one line."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def server_time(self) -> datetime | None:
        """The API server's clock, from the `Date` header (second resolution)."""
        raw = self.headers.get("Date") or self.headers.get("date")
        if not raw:
            return None
        try:
            return parsedate_to_datetime(raw).astimezone(UTC)
        except (TypeError, ValueError):
            return None


def parse_warnings(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        match = _WARNING.match(value)
        text = match.group(1) if match else value
        out.append(re.sub(r"\\(.)", r"\1", text))
    return out


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise ChangeGateError(f"{api_version} {kind} is not a kind changegate gates")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def approvals_path(namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{CA_GROUP}/{CA_VERSION}"
    if namespace is None:
        return f"{base}/{CA_PLURAL}"
    path = f"{base}/namespaces/{quote(namespace, safe='')}/{CA_PLURAL}"
    return f"{path}/{quote(name, safe='')}" if name else path


def configmap_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps/{quote(name, safe='')}"


def _status_message(status: int, data: bytes, path: str) -> tuple[str, str]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        doc = {}
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        message = str(doc.get("message") or doc.get("reason") or f"HTTP {status}")
        return " ".join(message.split()), str(doc.get("reason") or "")
    text = data.decode("utf-8", "replace").strip().splitlines()
    return (f"HTTP {status} from {path}" + (f": {text[0][:200]}" if text else "")), ""


class Api:
    """One API server, as one user. Every method raises ApiError or ChangeGateError."""

    def __init__(self, api_client: Any) -> None:
        self.client = api_client
        self.host = str(api_client.configuration.host)

    def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
             body: Any = None, content_type: str = JSON, ok_missing: bool = False) -> Response:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": JSON, "Content-Type": content_type}
        query_list = list((query or {}).items())
        try:
            method, url, headers, _, _ = self.client.param_serialize(
                method, path, query_params=query_list, header_params=headers,
                auth_settings=["BearerToken"])
            raw = self.client.call_api(method, url, header_params=headers, body=body,
                                       _request_timeout=TIMEOUT)
            data = raw.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ChangeGateError(f"cannot reach the API server at {self.host}: "
                                  f"{_reason(exc)}") from exc
        except OSError as exc:
            raise ChangeGateError(f"cannot reach the API server at {self.host}: {exc}") from exc
        except ApiException as exc:
            # The client turns TLS failures into ApiException(status=0) with a multi-line
            # reason whose last line says what went wrong.
            first = str(exc.reason or exc).splitlines()
            raise ChangeGateError(f"cannot talk to the API server at {self.host}: "
                                  f"{first[-1] if first else exc}") from exc
        header_map = raw.headers
        warnings = parse_warnings(header_map.getlist("Warning")
                                  if hasattr(header_map, "getlist") else [])
        if raw.status == 404 and ok_missing:
            return Response(404, None, header_map, warnings)
        if raw.status >= 400:
            message, reason = _status_message(raw.status, data, path)
            if raw.status == 401:
                message = ("Unauthorized: the API server did not accept your credentials "
                           f"({message})")
            raise ApiError(raw.status, message, reason)
        try:
            parsed = json.loads(data) if data else None
        except ValueError as exc:
            raise ChangeGateError(f"{method} {path}: the answer is not JSON") from exc
        return Response(raw.status, parsed, header_map, warnings)

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        found = self.call("GET", path, query=query, ok_missing=True).body
        return found if isinstance(found, dict) else None

    def whoami(self) -> tuple[str, datetime]:
        """The username the API server sees (SelfSubjectReview) and the server's clock."""
        answer = self.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           body={"apiVersion": "authentication.k8s.io/v1",
                                 "kind": "SelfSubjectReview"})
        user = ((answer.body or {}).get("status") or {}).get("userInfo") or {}
        name = user.get("username")
        if not isinstance(name, str) or not name:
            raise ChangeGateError("the API server did not say who you are (SelfSubjectReview)")
        return name, answer.server_time or datetime.now(UTC)


def _reason(exc: Exception) -> str:
    inner = getattr(exc, "reason", None) or exc
    text = str(inner)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    # urllib3 wraps the cause in text like "<urllib3.connection...>: Failed to establish ...".
    return text.split(">: ")[-1][:200]


