"""Raw JSON over the Kubernetes REST API, on the client kube.py builds.

Raw on purpose: the digest is computed over the object exactly as the API server sends
it, and the generated model classes would re-shape it (drop unknown fields, turn
int-or-string values into one type). So this is a dozen lines of GET/POST/PATCH that
return parsed JSON and raise ``ApiError`` with the API's own status code.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

MERGE_PATCH = "application/merge-patch+json"
# Every call the operator makes is small; a minute is far beyond a healthy API server's
# answer and short enough that a hung connection does not stall a handler for long.
REQUEST_TIMEOUT = 60.0

# (apiVersion, kind) -> REST plural, for the kinds the operator reads and writes.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "ConfigMap"): "configmaps",
    ("changegate.io/v1alpha1", "ChangeApproval"): "changeapprovals",
}


class ApiError(Exception):
    """A call the API server refused (``status``) or could not be made (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None,
                subresource: str | None = None) -> str:
    """``/apis/apps/v1/namespaces/ns/deployments/name[/status]`` and the like."""
    plural = PLURALS[(api_version, kind)]
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        path += "/" + quote(name, safe="")
    if subresource:
        path += "/" + subresource
    return path


class Api:
    """Wraps a ``kubernetes.aio.client.ApiClient`` (from ``changegate.kube.async_client``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = await self._client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = await self._client.call_api(method, url, header_params=headers,
                                                   body=body, _request_timeout=REQUEST_TIMEOUT)
            raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc) or "no answer") from exc
        if response.status >= 400:
            raise _error(response.status, raw)
        return json.loads(raw) if raw else None

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            found = await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await self.request("POST", path, body)
        return created if isinstance(created, dict) else {}

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """RFC 7386. A ``metadata.resourceVersion`` in ``body`` makes it conditional: the
        API server answers 409 when the object changed since that version."""
        patched = await self.request("PATCH", path, body, content_type=MERGE_PATCH)
        return patched if isinstance(patched, dict) else {}


def _error(status: int, raw: bytes) -> ApiError:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return ApiError(status, str(doc.get("reason") or ""), str(doc.get("message") or ""))
    return ApiError(status, "", raw[:200].decode("utf-8", "replace"))
