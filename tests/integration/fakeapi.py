"""A fake Kubernetes API server (aiohttp) for the cache tests: list + watch with real
resourceVersion semantics, which is what the cache's correctness hangs on.

Why not kmock 0.8: its emulator answers every list with resourceVersion "..." and replays
every object as ADDED on each watch whatever resourceVersion is asked for, with no
bookmarks and no 410, so resume-from-version, relist-on-Gone and bookmarks (the behaviour
under test) cannot be observed with it. This fake keeps one global version counter and an
event history per resource, like etcd and the watch cache do, and lets a test:
- drop every open watch (`drop_watches`), compact history (`compact`) to force 410 Gone,
- hold back watch events of one resource (`hold`) to exercise the read-through,
- send bookmarks, and read back every request it served (`requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

RESOURCES = {  # plural -> (api prefix, kind, apiVersion, namespaced)
    "changeapprovals": ("apis/changegate.io/v1alpha1", "ChangeApproval", "changegate.io/v1alpha1",
                        True),
    "namespaces": ("api/v1", "Namespace", "v1", False),
    "configmaps": ("api/v1", "ConfigMap", "v1", True),
    "horizontalpodautoscalers": ("apis/autoscaling/v2", "HorizontalPodAutoscaler",
                                 "autoscaling/v2", True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Watcher:
    plural: str
    namespace: str | None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    response: web.StreamResponse | None = None


class FakeAPI:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.version = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in RESOURCES}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {p: [] for p in RESOURCES}
        self.compacted = 0  # watches from a version below this get 410
        self.watchers: list[_Watcher] = []
        self.held: set[str] = set()
        self._held_events: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.page_size: int | None = None
        self.list_delay = 0.0  # seconds each list takes (a slow API server)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> FakeAPI:
        app = web.Application()
        app.router.add_get("/{prefix:apis?/.+}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- state changes (as if made through the API) -----------------------------------------
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = self._plural(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        kind = "MODIFIED" if key in self.objects[plural] else "ADDED"
        self.version += 1
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(self.version)
        stored = copy.deepcopy(obj)
        self.objects[plural][key] = stored
        self._emit(plural, kind, stored)
        return stored

    def delete(self, plural: str, name: str, namespace: str = "") -> None:
        stored = self.objects[plural].pop((namespace, name))
        self.version += 1
        gone = copy.deepcopy(stored)
        gone["metadata"]["resourceVersion"] = str(self.version)
        self._emit(plural, "DELETED", gone)

    def compact(self) -> None:
        """Forget history up to now, as etcd compaction does: older versions get 410."""
        self.compacted = self.version
        for events in self.history.values():
            events.clear()

    def hold(self, plural: str) -> None:
        self.held.add(plural)

    def release(self, plural: str) -> None:
        self.held.discard(plural)
        pending, self._held_events = self._held_events, []
        for held_plural, event in pending:
            if held_plural == plural:
                self._fan_out(held_plural, event)
            else:
                self._held_events.append((held_plural, event))

    def bookmark(self) -> None:
        """Advance the version without a change here (others changed) and bookmark it."""
        self.version += 1
        for watcher in self.watchers:
            _, kind, api_version, _ = RESOURCES[watcher.plural]
            watcher.queue.put_nowait({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.version)}}})

    async def drop_watches(self) -> None:
        """Cut every open watch connection, as a restarting API server or LB would."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)
        await asyncio.sleep(0.05)

    def watch_requests(self, plural: str) -> list[dict[str, str]]:
        return [q for path, q in self.requests if path.endswith(plural) and q.get("watch")]

    def list_requests(self, plural: str) -> list[dict[str, str]]:
        return [q for path, q in self.requests if path.endswith(plural) and not q.get("watch")]

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _plural(obj: dict[str, Any]) -> str:
        for plural, (_, kind, _, _) in RESOURCES.items():
            if obj.get("kind") == kind:
                return plural
        raise ValueError(f"unknown kind {obj.get('kind')}")

    def _emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": obj}
        self.history[plural].append((self.version, kind, obj))
        if plural in self.held:
            self._held_events.append((plural, event))
        else:
            self._fan_out(plural, event)

    def _fan_out(self, plural: str, event: dict[str, Any]) -> None:
        namespace = event["object"]["metadata"].get("namespace", "")
        for watcher in self.watchers:
            if watcher.plural == plural and watcher.namespace in (None, namespace):
                watcher.queue.put_nowait(event)

    def _route(self, path: str) -> tuple[str, str | None]:
        parts = path.strip("/").split("/")
        plural = parts[-1]
        if plural not in RESOURCES:
            raise web.HTTPNotFound(text=f"fake API: no resource {path}")
        namespace = parts[-2] if len(parts) >= 3 and parts[-3] == "namespaces" else None
        return plural, namespace

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.path, query))
        single = self._get_one(request.path)
        if single is not None:
            return single
        plural, namespace = self._route(request.path)
        if query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, plural, namespace, query)
        if self.list_delay:
            await asyncio.sleep(self.list_delay)
        items = sorted((o for (ns, _), o in self.objects[plural].items()
                        if namespace is None or ns == namespace),
                       key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        start = int(query.get("continue") or 0)
        limit = int(query["limit"]) if query.get("limit") else None
        if self.page_size is not None:
            limit = min(limit or self.page_size, self.page_size)
        page = items[start:start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
        _, kind, api_version, _ = RESOURCES[plural]
        return web.Response(body=orjson.dumps({"kind": f"{kind}List", "apiVersion": api_version,
                                               "metadata": meta, "items": page}),
                            content_type="application/json")

    def _get_one(self, path: str) -> web.Response | None:
        """GET of one cluster-scoped object (`/api/v1/namespaces/NAME`), or None."""
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[-1] in RESOURCES or parts[-2] not in RESOURCES:
            return None
        plural, name = parts[-2], parts[-1]
        found = self.objects[plural].get(("", name))
        if found is None:
            return web.Response(status=404, content_type="application/json", body=orjson.dumps({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                "message": f'{plural} "{name}" not found', "code": 404}))
        return web.Response(body=orjson.dumps(found), content_type="application/json")

    async def _watch(self, request: web.Request, plural: str, namespace: str | None,
                     query: dict[str, str]) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or 0)
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        if since < self.compacted:
            await response.write(orjson.dumps({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"too old resource version: {since} ({self.compacted})",
                "reason": "Expired", "code": 410}}) + b"\n")
            return response
        watcher = _Watcher(plural, namespace, response=response)
        for version, kind, obj in self.history[plural]:
            if version > since and namespace in (None, obj["metadata"].get("namespace", "")):
                watcher.queue.put_nowait({"type": kind, "object": obj})
        self.watchers.append(watcher)
        timeout = float(query.get("timeoutSeconds") or 3600)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await watcher.queue.get()
                    if event is None:  # dropped: cut the connection without a clean end
                        with contextlib.suppress(Exception):
                            request.transport.close()  # type: ignore[union-attr]
                        break
                    await response.write(orjson.dumps(event) + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self.watchers.remove(watcher)
        return response


def namespace(name: str, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def configmap(name: str, namespace_: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace_}, "data": data}
