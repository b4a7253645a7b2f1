"""A small fake Kubernetes API server (aiohttp) for the workflow CLI: exactly the calls the
CLI makes, with the API server's behaviour where the CLI depends on it.

- bearer-token users (the token is the username), SelfSubjectReview, a `Date` header from
  a settable clock;
- ConfigMaps, Deployments (with a few of the real defaults, so a dry-run result differs
  from the file), Namespaces, HPAs, ChangeApprovals (signatures append-only, the rest
  immutable, like the CRD's CEL rules);
- POST/PUT/PATCH (strategic merge, merge, apply, JSON patch)/DELETE, `dryRun=All`,
  resourceVersion and uid preconditions (409), a failed JSON-patch `test` (422);
- an admission step that runs the real `changegate.core.decision.decide` on the write, so
  dry-runs carry `changegate: would DENY` warnings and real writes are denied like the
  webhook would;
- knobs for tests: forbid(user, prefix), hold(path, n) (a barrier that makes n readers see
  the same resourceVersion), clock.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import threading
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import trustme
import yaml
from aiohttp import web

from changegate.core.decision import Context, decide
from changegate.core.review import parse_review
from changegate.files import build_snapshot

# (group/version prefix, plural) -> (apiVersion, kind)
RESOURCES = {
    ("/api/v1", "configmaps"): ("v1", "ConfigMap"),
    ("/apis/apps/v1", "deployments"): ("apps/v1", "Deployment"),
    ("/apis/changegate.io/v1alpha1", "changeapprovals"): ("changegate.io/v1alpha1",
                                                          "ChangeApproval"),
    ("/apis/autoscaling/v2", "horizontalpodautoscalers"): ("autoscaling/v2",
                                                           "HorizontalPodAutoscaler"),
}
# Strategic-merge keys the fake honours (a subset of the real Go struct tags).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "ports": "containerPort", "volumes": "name", "volumeMounts": "mountPath"}


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
    resources = [{"name": "namespaces", "singularName": "namespace", "namespaced": False,
                  "kind": "Namespace", "verbs": ["get", "list"]}] \
        if group_version == "v1" else []
    for (_, plural), (api_version, kind) in RESOURCES.items():
        if api_version == group_version:
            resources.append({"name": plural, "singularName": kind.lower(), "namespaced": True,
                              "kind": kind, "verbs": ["create", "delete", "get", "list",
                                                      "patch", "update", "watch"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def _openapi(group_version: str) -> dict[str, Any]:
    """Just enough OpenAPI v3 for kubectl to see that the API server validates fields
    itself (`fieldValidation`); without schemas it computes strategic merge patches from
    its own compiled-in types, as it does for any built-in kind."""
    group, _, version = group_version.rpartition("/")
    paths = {}
    for (prefix, plural), (api_version, kind) in RESOURCES.items():
        if api_version != group_version:
            continue
        gvk = {"group": group, "version": version, "kind": kind}
        param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
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
    versions = sorted({v for v, _ in RESOURCES.values()})
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

class FakeKube:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.rv = 1000
        self.now: datetime | None = None
        self.forbidden: list[tuple[str, str, str]] = []  # (user, method or *, path prefix)
        self.holds: dict[str, list[Any]] = {}
        self.conflicts = 0
        self.requests: list[tuple[str, str, str]] = []  # (user, method, path?query)
        self.trust_text: str | None = None
        self.policy_text: str = ""
        self.webhook = True
        self._ctx = Context()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.ca = trustme.CA()  # kubectl sends a bearer token over TLS only

    # -- lifecycle and knobs ---------------------------------------------------------------
    def start(self) -> FakeKube:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(tls)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, user: str, namespace: str | None = None) -> str:
        path = self.workdir / f"{user}.kubeconfig"
        context: dict[str, Any] = {"cluster": "fake", "user": user}
        if namespace:
            context["namespace"] = namespace
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "fake", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(
                    self.ca.cert_pem.bytes()).decode()}}],
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
        """Store an object as an administrator would have created it."""
        obj = defaulted(copy.deepcopy(obj))
        if obj["kind"] == "Namespace":
            self.namespaces[obj["metadata"]["name"]] = obj
            return obj
        plural = next(p for (_, p), (_, k) in RESOURCES.items() if k == obj["kind"])
        self._stamp(obj, None)
        m = obj["metadata"]
        self.store[(plural, m["namespace"], m["name"])] = obj
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.store.get((plural, namespace, name)))

    def _stamp(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.rv += 1
        m = obj.setdefault("metadata", {})
        m["resourceVersion"] = str(self.rv)
        m["uid"] = (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
        m["creationTimestamp"] = ((old or {}).get("metadata", {}).get("creationTimestamp")
                                  or self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        if obj.get("kind") == "ChangeApproval":
            obj.setdefault("spec", {}).setdefault("signatures", [])

    # -- HTTP ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
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
            body, warnings, code = await self._route(request, user)
        except Refusal as exc:
            return web.json_response(status_body(exc.code, exc.reason, exc.message),
                                     status=exc.code, headers=headers)
        response = web.json_response(body, status=code, headers=headers)
        for warning in warnings:
            quoted = warning.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{quoted}"')
        return response

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
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:3] == ["api", "v1", "namespaces"]:
            ns = self.namespaces.get(parts[3])
            if ns is None:
                raise Refusal(404, "NotFound", f'namespaces "{parts[3]}" not found')
            return ns, [], 200
        for (prefix, plural), (api_version, kind) in RESOURCES.items():
            pre = prefix.strip("/").split("/")
            n = len(pre)
            if parts[:n] != pre:
                continue
            rest = parts[n:]
            if rest == [plural]:
                return self._list(plural, api_version, kind, None, request), [], 200
            if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == plural:
                ns = rest[1]
                name = rest[3] if len(rest) == 4 else None
                return await self._resource(request, user, plural, api_version, kind, ns, name)
        raise Refusal(404, "NotFound", f"the server could not find the requested resource "
                      f"({path})")

    def _list(self, plural: str, api_version: str, kind: str, ns: str | None,
              request: web.Request) -> dict[str, Any]:
        selector = dict(kv.split("=", 1) for kv in
                        filter(None, request.query.get("labelSelector", "").split(",")))
        items = [copy.deepcopy(o) for (p, n, _), o in sorted(self.store.items())
                 if p == plural and (ns is None or n == ns)
                 and all((o["metadata"].get("labels") or {}).get(k) == v
                         for k, v in selector.items())]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if request.query.get("limit"):  # paging as the API server does it (an opaque token)
            start, size = int(request.query.get("continue") or 0), int(request.query["limit"])
            if start + size < len(items):
                meta["continue"] = str(start + size)
            items = items[start:start + size]
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": meta,
                "items": items}

    async def _resource(self, request: web.Request, user: str, plural: str, api_version: str,
                        kind: str, ns: str, name: str | None) -> tuple[Any, list[str], int]:
        method = request.method
        dry = request.query.get("dryRun") == "All"
        key = (plural, ns, name or "")
        if method == "GET" and name is None:
            return self._list(plural, api_version, kind, ns, request), [], 200
        if method == "GET":
            await self._wait_hold(request.path, user)
            found = self.get(plural, ns, name or "")
            if found is None:
                raise Refusal(404, "NotFound", f'{plural} "{name}" not found')
            return found, [], 200
        raw = await request.read()
        body = json.loads(raw) if raw else None
        live = self.get(plural, ns, name or "")
        if method == "POST":
            obj = copy.deepcopy(body)
            obj.setdefault("metadata", {})["namespace"] = ns
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
                for field in ("uid", "resourceVersion"):
                    if pre.get(field) and pre[field] != m.get(field):
                        raise Refusal(409, "Conflict", f"Precondition failed: {field}")
            else:
                obj = self._patched(method, request.content_type, live, body, api_version,
                                    kind, ns, name or "")
        if obj is not None:
            obj = defaulted(obj)
            if plural == "changeapprovals" and old is not None:
                self._check_approval_update(old, obj)
        warnings = self._admit(user, kind, api_version, plural, ns,
                               (obj or old or {}).get("metadata", {}).get("name", ""),
                               method, obj, old, dry)
        if obj is not None:
            self._stamp(obj, old)
        if not dry:
            if obj is None:
                del self.store[key]
            else:
                self.store[(plural, ns, obj["metadata"]["name"])] = obj
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
            self.conflicts += 1
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
        objects += list(self.namespaces.values())
        snapshot = build_snapshot(trust_text=self.trust_text, policy_text=self.policy_text,
                                  objects=copy.deepcopy(objects))
        decision = decide(parse_review(review), snapshot, self.clock(), self._ctx)
        if not decision.allowed and not dry:
            raise Refusal(403, "Forbidden", f'admission webhook "validate.changegate.io" '
                          f"denied the request: {decision.message}")
        return list(decision.warnings)
