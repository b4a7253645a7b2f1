"""The one fake Kubernetes API server of the tests (aiohttp, real HTTPS with a trustme CA,
in a thread of its own): the calls the CLI, kubectl and the webhook's cache make, with the
API server's behaviour where they depend on it.

- bearer-token users (the token is the username), SelfSubjectReview, a `Date` header from
  a settable clock; discovery and just enough OpenAPI for kubectl's client-side apply;
- Namespaces, ConfigMaps, Deployments (with a few of the real defaults, so a dry-run result
  differs from the file), HPAs, ChangeApprovals (signatures append-only, the rest
  immutable, like the CRD's CEL rules);
- POST/PUT/PATCH (strategic merge, merge, apply, JSON patch)/DELETE, `dryRun=All`,
  resourceVersion and uid preconditions (409), a failed JSON-patch `test` (422);
- lists (paged with limit/continue, labelSelector) and watches with real resourceVersion
  semantics: replay from a version, bookmarks, 410 Expired below the compacted version;
- an admission step that runs the real `changegate.core.decision.decide` on the write, so
  dry-runs carry `changegate: would DENY` warnings and real writes are denied like the
  webhook would;
- knobs for tests: forbid(user, prefix), hold(path, users, nth) (a barrier that makes n
  readers see the same resourceVersion), hold_events/release_events (a lagging watch),
  drop_watches, compact, bookmark, page_size, list_delay, stop/start on the same port,
  clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import trustme
import yaml
from aiohttp import web

from changegate.core.decision import Context, decide
from changegate.core.review import parse_review
from changegate.files import build_snapshot

# plural -> (path prefix, apiVersion, kind, namespaced)
RESOURCES = {
    "namespaces": ("/api/v1", "v1", "Namespace", False),
    "configmaps": ("/api/v1", "v1", "ConfigMap", True),
    "deployments": ("/apis/apps/v1", "apps/v1", "Deployment", True),
    "changeapprovals": ("/apis/changegate.io/v1alpha1", "changegate.io/v1alpha1",
                        "ChangeApproval", True),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", "autoscaling/v2",
                                 "HorizontalPodAutoscaler", True),
    "events": ("/api/v1", "v1", "Event", True),
    # kopf lists and watches CRDs to notice new resources; there are none to notice here.
    "customresourcedefinitions": ("/apis/apiextensions.k8s.io/v1", "apiextensions.k8s.io/v1",
                                  "CustomResourceDefinition", False),
}
# The status subresource: a write there changes only .status (what the operator patches).
WITH_STATUS = ("changeapprovals", "deployments", "horizontalpodautoscalers")
# Strategic-merge keys the fake honours (a subset of the real Go struct tags).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "ports": "containerPort", "volumes": "name", "volumeMounts": "mountPath"}


def plural_of(obj: dict[str, Any]) -> str:
    for plural, (_, _, kind, _) in RESOURCES.items():
        if obj.get("kind") == kind:
            return plural
    raise ValueError(f"the fake serves no {obj.get('kind')}")


def namespace(name: str, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def configmap(name: str, namespace_: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace_}, "data": data}


class Refusal(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# --- patch semantics --------------------------------------------------------------------

def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def strategic_merge(live: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(live, dict):
        return _clean(patch)
    out = copy.deepcopy(live)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(out.get(key), list):
            mk = MERGE_KEYS[key]
            items = list(out[key])
            for item in value:
                at = next((i for i, x in enumerate(items) if x.get(mk) == item.get(mk)), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        items.pop(at)
                elif at is not None:
                    items[at] = strategic_merge(items[at], item)
                else:
                    items.append(_clean(item))
            order = [o.get(mk) for o in patch.get(f"$setElementOrder/{key}") or []]
            if order:
                items.sort(key=lambda x: order.index(x.get(mk)) if x.get(mk) in order
                           else len(order))
            out[key] = items
        else:
            out[key] = _clean(value)
    retain = patch.get("$retainKeys")
    if retain is not None:
        out = {k: v for k, v in out.items() if k in retain}
    return out


def merge_patch(live: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = copy.deepcopy(live) if isinstance(live, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise Refusal(422, "Invalid", f"the server rejected our request due to an error "
                              f"in our request: testing value {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                else:
                    parent.insert(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
    return doc


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    """A few of the API server's Deployment defaults: enough that a dry-run differs."""
    if obj.get("kind") != "Deployment":
        return obj
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type") == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {"maxSurge": "25%", "maxUnavailable": "25%"})
    pod = spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Always")
    pod.setdefault("dnsPolicy", "ClusterFirst")
    for container in pod.get("containers") or []:
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
    return obj


# --- what kubectl reads before it writes ---------------------------------------------------

def _resource_list(group_version: str) -> dict[str, Any]:
    resources = [{"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                  "kind": kind, "verbs": ["create", "delete", "get", "list", "patch",
                                          "update", "watch"]}
                 for plural, (_, api_version, kind, namespaced) in RESOURCES.items()
                 if api_version == group_version]
    resources += [{"name": f"{plural}/status", "singularName": "", "namespaced": True,
                   "kind": RESOURCES[plural][2], "verbs": ["get", "patch", "update"]}
                  for plural in WITH_STATUS if RESOURCES[plural][1] == group_version]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def _openapi(group_version: str) -> dict[str, Any]:
    """Just enough OpenAPI v3 for kubectl to see that the API server validates fields
    itself (`fieldValidation`); without schemas it computes strategic merge patches from
    its own compiled-in types, as it does for any built-in kind."""
    group, _, version = group_version.rpartition("/")
    paths = {}
    param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
    for plural, (prefix, api_version, kind, namespaced) in RESOURCES.items():
        if api_version != group_version or not namespaced:
            continue
        gvk = {"group": group, "version": version, "kind": kind}
        paths[f"{prefix}/namespaces/{{namespace}}/{plural}/{{name}}"] = {
            verb: {"x-kubernetes-group-version-kind": gvk, "parameters": param,
                   "responses": {"200": {"description": "OK"}}}
            for verb in ("patch", "put")}
        paths[f"{prefix}/namespaces/{{namespace}}/{plural}"] = {
            "post": {"x-kubernetes-group-version-kind": gvk, "parameters": param,
                     "responses": {"201": {"description": "Created"}}}}
    return {"openapi": "3.0.0", "info": {"title": "fake", "version": "v1"}, "paths": paths,
            "components": {"schemas": {}}}


def discovery(path: str) -> Any:
    """/version, /api, /apis, their resource lists and OpenAPI v3; None for anything else."""
    versions = sorted({v for _, v, _, _ in RESOURCES.values()})
    groups = [v for v in versions if "/" in v]
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g.split("/")[0], "versions": [{"groupVersion": g, "version": g.split("/")[1]}],
             "preferredVersion": {"groupVersion": g, "version": g.split("/")[1]}}
            for g in groups]}
    if path == "/api/v1":
        return _resource_list("v1")
    if path.startswith("/apis/") and path.removeprefix("/apis/") in groups:
        return _resource_list(path.removeprefix("/apis/"))
    if path == "/openapi/v3":
        return {"paths": {("api/v1" if v == "v1" else f"apis/{v}"): {
            "serverRelativeURL": f"/openapi/v3/{'api/v1' if v == 'v1' else 'apis/' + v}"}
            for v in versions}}
    if path.startswith("/openapi/v3/"):
        rest = path.removeprefix("/openapi/v3/")
        return _openapi("v1" if rest == "api/v1" else rest.removeprefix("apis/"))
    return None


# --- the server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Watcher:
    plural: str
    namespace: str | None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


class FakeKube:
    def __init__(self, workdir: Path, port: int | None = None, *, tls: bool = True) -> None:
        self.workdir = workdir
        self.tls = tls
        self.port = port or free_port()  # fixed, so a stopped server comes back on it
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.version = 1000  # the last resourceVersion handed out
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, plural, type, obj)
        self.compacted = 0  # watches from a version below this get 410 Expired
        self.watchers: list[_Watcher] = []
        self.held: set[str] = set()  # plurals whose watch events wait for release_events
        self._held_events: list[tuple[str, dict[str, Any]]] = []
        self.page_size: int | None = None
        self.list_delay = 0.0  # seconds each list takes (a slow API server)
        self.now: datetime | None = None
        self.forbidden: list[tuple[str, str, str]] = []  # (user, method or *, path prefix)
        self.holds: dict[str, list[Any]] = {}
        self.conflicts: dict[str, int] = {}  # name -> how many writes to refuse with 409
        self.write_count = 0  # writes served: tests wait for a quiet spell
        self.requests: list[tuple[str, str, str]] = []  # (user, method, path?query)
        self.trust_text: str | None = None
        self.policy_text: str = ""
        self.webhook = True
        # HTTPS by default: kubectl sends a bearer token over TLS only.
        self.ca = trustme.CA()
        self._ctx = Context()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- lifecycle and knobs ---------------------------------------------------------------
    def start(self) -> FakeKube:
        if not self._thread.is_alive():
            self._thread.start()
        self._run(self._start())
        return self

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        tls = None
        if self.tls:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1").configure_cert(tls)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()

    def stop(self) -> None:
        """Stop serving (open watches are cut); start() serves again on the same port."""
        if self._thread.is_alive():
            self._run(self._stop())

    async def _stop(self) -> None:
        self._drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def close(self) -> None:
        self.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, user: str, namespace: str | None = None) -> str:
        path = self.workdir / f"{user}.kubeconfig"
        context: dict[str, Any] = {"cluster": "fake", "user": user}
        if namespace:
            context["namespace"] = namespace
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "fake", "cluster": {"server": self.url} | ({
                "certificate-authority-data": base64.b64encode(
                    self.ca.cert_pem.bytes()).decode()} if self.tls else {})}],
            "users": [{"name": user, "user": {"token": user}}],
            "contexts": [{"name": user, "context": context}]}))
        return str(path)

    def clock(self) -> datetime:
        return self.now or datetime.now(UTC).replace(microsecond=0)

    def forbid(self, user: str, prefix: str, method: str = "*") -> None:
        self.forbidden.append((user, method, prefix))

    def hold(self, path: str, users: set[str], nth: int) -> None:
        """Each of `users`' nth GET of `path` waits until every one of them made it: they
        all read the same resourceVersion, so their writes race for real."""
        self.holds[path] = [set(users), nth, {}, None]

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as an administrator would have created or changed it."""
        obj = defaulted(copy.deepcopy(obj))
        plural = plural_of(obj)
        m = obj.setdefault("metadata", {})
        key = (plural, m.get("namespace", "") if RESOURCES[plural][3] else "", m["name"])
        old = self.store.get(key)
        self._stamp(obj, old)
        self.store[key] = obj
        self._emit(plural, "ADDED" if old is None else "MODIFIED", obj)
        return copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.store.get((plural, namespace, name)))

    def obj(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """``get`` by "group/version/plural" (e.g. "v1/configmaps")."""
        return self.get(resource.rsplit("/", 1)[-1], namespace or "", name)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events about the object ``name`` in ``namespace``."""
        return [copy.deepcopy(e) for (p, ns, _), e in self.store.items()
                if p == "events" and ns == namespace
                and (e.get("involvedObject") or {}).get("name") == name]

    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json", user: str = "admin"
                      ) -> tuple[int, Any]:
        """A call through HTTP, as a client would make it: (status, parsed answer)."""
        import aiohttp

        tls = ssl.create_default_context()
        self.ca.configure_trust(tls)
        headers = {"Authorization": f"Bearer {user}", "Content-Type": content_type}
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, data=None if body is None else json.dumps(body),
                headers=headers, ssl=tls if self.tls else None) as response:
            return response.status, await response.json()

    def delete(self, plural: str, name: str, namespace: str = "") -> None:
        gone = self.store.pop((plural, namespace, name))
        self.version += 1
        gone["metadata"]["resourceVersion"] = str(self.version)
        self._emit(plural, "DELETED", gone)

    def compact(self) -> None:
        """Forget history up to now, as etcd compaction does: older versions get 410."""
        self.compacted = self.version
        self.history.clear()

    def hold_events(self, plural: str) -> None:
        """Watch events of ``plural`` wait (a watch lagging behind the writes)."""
        self.held.add(plural)

    def release_events(self, plural: str) -> None:
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
            _, api_version, kind, _ = RESOURCES[watcher.plural]
            self._send(watcher, {"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.version)}}})

    async def drop_watches(self) -> None:
        """Cut every open watch connection, as a restarting API server or LB would."""
        self._drop_watches()
        await asyncio.sleep(0.05)

    def _drop_watches(self) -> None:
        for watcher in list(self.watchers):
            self._send(watcher, None)

    def queries(self, plural: str, *, watch: bool) -> list[dict[str, str]]:
        """The query of each list (watch=False) or watch of ``plural``'s collections."""
        out = []
        for _, method, path_qs in self.requests:
            path, _, query = path_qs.partition("?")
            q = dict(parse_qsl(query))
            if method == "GET" and path.endswith(f"/{plural}") and bool(q.get("watch")) == watch:
                out.append(q)
        return out

    def watch_requests(self, plural: str) -> list[dict[str, str]]:
        return self.queries(plural, watch=True)

    def list_requests(self, plural: str) -> list[dict[str, str]]:
        return self.queries(plural, watch=False)

    def _stamp(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.version += 1
        m = obj.setdefault("metadata", {})
        m["resourceVersion"] = str(self.version)
        m["uid"] = ((old or {}).get("metadata", {}).get("uid") or m.get("uid")
                    or str(uuid.uuid4()))
        m["creationTimestamp"] = ((old or {}).get("metadata", {}).get("creationTimestamp")
                                  or self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        if obj.get("kind") == "ChangeApproval":
            obj.setdefault("spec", {}).setdefault("signatures", [])
        if "spec" in obj:  # kinds with a spec count its changes, as the API server does
            before = (old or {}).get("metadata", {}).get("generation") or 0
            changed = old is None or old.get("spec") != obj.get("spec")
            m["generation"] = before + 1 if changed else before

    # -- watch fan-out (any thread) ---------------------------------------------------------
    def _emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self.history.append((self.version, plural, kind, event["object"]))
        if plural in self.held:
            self._held_events.append((plural, event))
        else:
            self._fan_out(plural, event)

    def _fan_out(self, plural: str, event: dict[str, Any]) -> None:
        namespace = event["object"]["metadata"].get("namespace", "")
        for watcher in self.watchers:
            if watcher.plural == plural and watcher.namespace in (None, namespace):
                self._send(watcher, event)

    def _send(self, watcher: _Watcher, event: dict[str, Any] | None) -> None:
        # Tests change the store from their own thread; the queue lives in the server's loop.
        self._loop.call_soon_threadsafe(watcher.queue.put_nowait, event)

    # -- HTTP ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {"Date": format_datetime(self.clock(), usegmt=True)}
        auth = request.headers.get("Authorization", "")
        user = auth.removeprefix("Bearer ").strip()
        self.requests.append((user, request.method, request.path_qs))
        try:
            if not user:
                raise Refusal(401, "Unauthorized", "Unauthorized")
            for who, method, prefix in self.forbidden:
                if who in (user, "*") and method in (request.method, "*") and \
                        request.path.startswith(prefix):
                    raise Refusal(403, "Forbidden", f"{request.path} is forbidden: User "
                                  f"\"{user}\" cannot {request.method.lower()} it")
            if request.method == "GET" and request.query.get("watch") in ("1", "true"):
                plural, ns, name, _ = self._locate(request.path)
                if name is not None:
                    raise Refusal(405, "MethodNotAllowed", "watch a collection")
                return await self._watch(request, plural, ns)
            body, warnings, code = await self._route(request, user)
        except Refusal as exc:
            return web.json_response(status_body(exc.code, exc.reason, exc.message),
                                     status=exc.code, headers=headers)
        response = web.json_response(body, status=code, headers=headers)
        for warning in warnings:
            quoted = warning.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{quoted}"')
        return response

    def _locate(self, path: str) -> tuple[str, str | None, str | None, str | None]:
        """(plural, namespace or None for all, name or None for the collection, subresource)."""
        for plural, (prefix, _, _, namespaced) in RESOURCES.items():
            if not path.startswith(prefix + "/"):
                continue
            rest = path.removeprefix(prefix + "/").split("/")
            if namespaced and len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == plural:
                rest = rest[3:]
                ns: str | None = path.removeprefix(prefix + "/").split("/")[1]
            elif rest[0] == plural and ((not namespaced and len(rest) <= 3) or len(rest) == 1):
                rest, ns = rest[1:], None
            else:
                continue
            if len(rest) > 2 or (len(rest) == 2 and (rest[1] != "status"
                                                     or plural not in WITH_STATUS)):
                continue
            return plural, ns, rest[0] if rest else None, rest[1] if len(rest) == 2 else None
        raise Refusal(404, "NotFound", f"the server could not find the requested resource "
                      f"({path})")

    async def _route(self, request: web.Request, user: str
                     ) -> tuple[Any, list[str], int]:
        path = request.path
        if path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
            return ({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                     "status": {"userInfo": {"username": user,
                                             "groups": ["system:authenticated"]}}}, [], 201)
        found = discovery(path)
        if found is not None:
            return found, [], 200
        plural, ns, name, sub = self._locate(path)
        if request.method == "GET" and name is None:
            return await self._list(plural, ns, request), [], 200
        if request.method != "GET":
            self.write_count += 1
        return await self._resource(request, user, plural, ns or "", name, sub)

    async def _list(self, plural: str, ns: str | None, request: web.Request) -> dict[str, Any]:
        if self.list_delay:
            await asyncio.sleep(self.list_delay)
        selector = dict(kv.split("=", 1) for kv in
                        filter(None, request.query.get("labelSelector", "").split(",")))
        items = [copy.deepcopy(o) for (p, n, _), o in sorted(self.store.items())
                 if p == plural and (ns is None or n == ns)
                 and all((o["metadata"].get("labels") or {}).get(k) == v
                         for k, v in selector.items())]
        start = int(request.query.get("continue") or 0)
        limit = int(request.query["limit"]) if request.query.get("limit") else None
        if self.page_size is not None:
            limit = min(limit or self.page_size, self.page_size)
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
        page = items[start:start + limit] if limit else items[start:]
        _, api_version, kind, _ = RESOURCES[plural]
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": meta,
                "items": page}

    async def _watch(self, request: web.Request, plural: str, ns: str | None
                     ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        if since < self.compacted:
            await response.write(json.dumps({"type": "ERROR", "object": status_body(
                410, "Expired", f"too old resource version: {since} ({self.compacted})")}
            ).encode() + b"\n")
            return response
        watcher = _Watcher(plural, ns)
        for version, p, kind, obj in list(self.history):
            if p == plural and version > since and ns in (None, obj["metadata"].get(
                    "namespace", "")):
                watcher.queue.put_nowait({"type": kind, "object": obj})
        self.watchers.append(watcher)
        try:
            async with asyncio.timeout(float(request.query.get("timeoutSeconds") or 3600)):
                while True:
                    event = await watcher.queue.get()
                    if event is None:  # dropped: cut the connection without a clean end
                        with contextlib.suppress(Exception):
                            request.transport.close()  # type: ignore[union-attr]
                        break
                    await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self.watchers.remove(watcher)
        return response

    async def _resource(self, request: web.Request, user: str, plural: str, ns: str,
                        name: str | None, sub: str | None = None
                        ) -> tuple[Any, list[str], int]:
        _, api_version, kind, _ = RESOURCES[plural]
        method = request.method
        dry = request.query.get("dryRun") == "All"
        key = (plural, ns, name or "")
        if method == "GET":
            await self._wait_hold(request.path, user)
            found = self.get(plural, ns, name or "")
            if found is None:
                raise Refusal(404, "NotFound", f'{plural} "{name}" not found')
            return found, [], 200
        raw = await request.read()
        body = json.loads(raw) if raw else None
        live = self.get(plural, ns, name or "")
        if method != "POST" and self.conflicts.get(name or "", 0) > 0:
            self.conflicts[name or ""] -= 1
            raise Refusal(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}":'
                          " the object has been modified (forced by the test)")
        if method == "POST":
            obj = copy.deepcopy(body)
            m = obj.setdefault("metadata", {})
            if RESOURCES[plural][3]:
                m["namespace"] = ns
            if not m.get("name") and m.get("generateName"):  # kopf's Events use it
                m["name"] = m["generateName"] + uuid.uuid4().hex[:8]
            key = (plural, ns, obj["metadata"].get("name", ""))
            if key in self.store:
                raise Refusal(409, "AlreadyExists",
                              f'{plural} "{obj["metadata"]["name"]}" already exists')
            old = None
        else:
            if live is None:
                if method == "PATCH" and "apply-patch" in request.content_type:
                    live = None  # server-side apply creates
                else:
                    raise Refusal(404, "NotFound", f'{plural} "{name}" not found')
            old = live
            if method == "DELETE":
                obj = None
                pre = (body or {}).get("preconditions") or {}
                m = (live or {}).get("metadata", {})
                for field_ in ("uid", "resourceVersion"):
                    if pre.get(field_) and pre[field_] != m.get(field_):
                        raise Refusal(409, "Conflict", f"Precondition failed: {field_}")
            else:
                obj = self._patched(method, request.content_type, live, body, api_version,
                                    kind, ns, name or "")
                if sub == "status" and live is not None:  # only .status changes there
                    obj = {**copy.deepcopy(live), "status": obj.get("status")}
        if obj is not None:
            obj = defaulted(obj)
            if plural == "changeapprovals" and old is not None:
                self._check_approval_update(old, obj)
        warnings = self._admit(user, kind, api_version, plural, ns,
                               (obj or old or {}).get("metadata", {}).get("name", ""),
                               method, obj, old, dry)
        if dry:
            if obj is not None:
                self._stamp(obj, old)
        elif obj is None:
            self.delete(plural, name or "", ns)
        else:
            self._stamp(obj, old)
            self.store[(plural, ns, obj["metadata"]["name"])] = obj
            self._emit(plural, "ADDED" if old is None else "MODIFIED", obj)
        if obj is None:
            return status_body(200, "", "deleted") | {"status": "Success"}, warnings, 200
        return copy.deepcopy(obj), warnings, 201 if method == "POST" else 200

    def _patched(self, method: str, content_type: str, live: dict[str, Any] | None, body: Any,
                 api_version: str, kind: str, ns: str, name: str) -> dict[str, Any]:
        if method == "PUT":
            obj = copy.deepcopy(body)
        elif content_type == "application/strategic-merge-patch+json":
            obj = strategic_merge(live, body)
        elif content_type == "application/merge-patch+json":
            obj = merge_patch(live, body)
        elif content_type == "application/json-patch+json":
            obj = json_patch(live or {}, body)
        elif content_type == "application/apply-patch+yaml":
            obj = merge_patch(live or {}, body)  # field ownership is not modelled
        else:
            raise Refusal(415, "UnsupportedMediaType", f"unsupported {content_type}")
        m = obj.setdefault("metadata", {})
        live_m = (live or {}).get("metadata", {})
        if m.get("resourceVersion") and live and m["resourceVersion"] != live_m.get(
                "resourceVersion"):
            raise Refusal(409, "Conflict", f'Operation cannot be fulfilled on {kind.lower()}s '
                          f'"{name}": the object has been modified; please apply your changes '
                          "to the latest version and try again")
        if m.get("uid") and live and m["uid"] != live_m.get("uid"):
            raise Refusal(409, "Conflict", "Precondition failed: UID in precondition")
        m.update(namespace=ns, name=m.get("name") or name)
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        return obj

    def _check_approval_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The CRD's transition rules: spec immutable but signatures, append-only."""
        o, n = dict(old.get("spec") or {}), dict(new.get("spec") or {})
        before, after = o.pop("signatures", []) or [], n.pop("signatures", []) or []
        if o != n:
            raise Refusal(422, "Invalid", "ChangeApproval spec is immutable except signatures")
        if not all(s in after for s in before):
            raise Refusal(422, "Invalid", "signatures may only be appended, never removed")

    async def _wait_hold(self, path: str, user: str) -> None:
        hold = self.holds.get(path)
        if hold is None or user not in hold[0]:
            return
        users, nth, seen, _ = hold
        seen[user] = seen.get(user, 0) + 1
        if seen[user] != nth:
            return
        if hold[3] is None:
            hold[3] = asyncio.Event()
        event = hold[3]
        if all(seen.get(u, 0) >= nth for u in users):
            event.set()
            del self.holds[path]
        else:
            await asyncio.wait_for(event.wait(), 20)

    # -- admission: the real decision core, as the webhook would answer --------------------
    def _admit(self, user: str, kind: str, api_version: str, plural: str, ns: str, name: str,
               method: str, obj: dict[str, Any] | None, old: dict[str, Any] | None,
               dry: bool) -> list[str]:
        if not self.webhook or self.trust_text is None or plural == "horizontalpodautoscalers":
            return []
        group, _, version = api_version.rpartition("/")
        operation = {"POST": "CREATE", "DELETE": "DELETE"}.get(method, "UPDATE")
        if operation == "UPDATE" and old is None:
            operation = "CREATE"
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": plural},
            "namespace": ns, "name": name, "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": obj, "oldObject": old, "dryRun": dry}}
        objects = [o for (p, n, _), o in self.store.items() if p == "changeapprovals" and n == ns]
        objects += [o for (p, _, _), o in self.store.items() if p == "namespaces"]
        snapshot = build_snapshot(trust_text=self.trust_text, policy_text=self.policy_text,
                                  objects=copy.deepcopy(objects))
        decision = decide(parse_review(review), snapshot, self.clock(), self._ctx)
        if not decision.allowed and not dry:
            raise Refusal(403, "Forbidden", f'admission webhook "validate.changegate.io" '
                          f"denied the request: {decision.message}")
        return list(decision.warnings)
