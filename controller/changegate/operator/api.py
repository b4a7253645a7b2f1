"""The operator's calls, on the one Kubernetes seam (changegate.kube): get, create and
conditional merge patches of raw JSON, ``ApiError`` with the API's own status code."""

from __future__ import annotations

from typing import Any

from changegate.kube import MERGE_PATCH, PLURALS, ApiError, AsyncKube, Unreachable, object_path

# Every call the operator makes is small; a minute is far beyond a healthy API server's
# answer and short enough that a hung connection does not stall a handler for long.
REQUEST_TIMEOUT = 60.0

__all__ = ["MERGE_PATCH", "PLURALS", "REQUEST_TIMEOUT", "Api", "ApiError", "object_path"]


class Api:
    """Wraps a ``kubernetes.aio.client.ApiClient`` (from ``changegate.kube.async_client``)."""

    def __init__(self, client: Any) -> None:
        self._kube = AsyncKube(client)

    async def close(self) -> None:
        await self._kube.close()

    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json") -> Any:
        try:
            answer = await self._kube.call(method, path, body=body, content_type=content_type,
                                           timeout=REQUEST_TIMEOUT)
        except Unreachable as exc:  # handlers retry both the same way: status 0, no answer
            raise ApiError(0, "Unreachable", str(exc)) from exc
        return answer.body

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

    async def delete(self, path: str, *, uid: str) -> None:
        """Delete the object only if it is still the one with ``uid`` (409 otherwise)."""
        await self.request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                            "preconditions": {"uid": uid}})

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """RFC 7386. A ``metadata.resourceVersion`` in ``body`` makes it conditional: the
        API server answers 409 when the object changed since that version."""
        patched = await self.request("PATCH", path, body, content_type=MERGE_PATCH)
        return patched if isinstance(patched, dict) else {}
