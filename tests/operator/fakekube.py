"""kmock's Kubernetes emulator, plus what the operator's correctness rests on.

kmock (pinned 0.8) stores objects and serves list/watch/get/create/patch/delete, but
stamps nothing and merges every write. The operator relies on the API server's
optimistic concurrency (ledger writes, status writes, kopf's own JSON patches), so this
subclass adds, the way kube-apiserver does it:
- uid, creationTimestamp, a resourceVersion and a name from generateName on create;
  a new resourceVersion on every write;
- a merge patch that carries ``metadata.resourceVersion`` is refused with 409 Conflict
  when the object has moved on; a JSON patch whose ``test`` op fails gets 422;
- ``conflicts[name] = n`` makes the next n writes to that object fail with 409, to
  prove the writer re-reads and retries.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock import KubernetesEmulator, KubernetesError
from kmock._internal import parsing

CHANGEAPPROVALS = "changegate.io/v1alpha1/changeapprovals"


class FakeKube(KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(1000)
        self.conflicts: dict[str, int] = {}
        self.writes = asyncio.Lock()
        self.write_count = 0  # every create/patch/delete served: tests wait for quiet

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            self.write_count += 1
        if request.resource is None or request.action not in (kmock.action.CREATE,
                                                              kmock.action.UPDATE):
            return await super()._handle(request)
        async with self.writes:  # check-and-write as one step, like etcd's compare-and-swap
            refusal = self._prepare(request)
            if refusal is not None:
                return await self._render_error(refusal)
            return await super()._handle(request)

    def _prepare(self, request: kmock.Request) -> KubernetesError | None:
        version = str(next(self.versions))
        if request.action == kmock.action.CREATE:
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):  # kopf's Events use it
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
            if request.namespace:
                meta["namespace"] = request.namespace
            meta.update(uid=str(uuid.uuid4()), resourceVersion=version, generation=1,
                        creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            return None
        if self.conflicts.get(request.name or "", 0) > 0:
            self.conflicts[request.name or ""] -= 1
            return KubernetesError(409, "Conflict", "the object has been modified (forced)")
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None  # the emulator answers 404
        stored = dict(self.objects[key].raw)
        current = str((stored.get("metadata") or {}).get("resourceVersion", ""))
        if isinstance(request.data, list):
            try:
                jsonpatch.apply_patch(copy.deepcopy(stored), request.data)
            except jsonpatch.JsonPatchException as exc:
                return KubernetesError(422, "Invalid", f"the patch does not apply: {exc}")
            request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                 "value": version})
            return None
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != current:
            return KubernetesError(409, "Conflict", f"the object has been modified: "
                                                    f"{wanted} is not {current}")
        request.data.setdefault("metadata", {})["resourceVersion"] = version
        return None

    def obj(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object as plain JSON, or None."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(dict(_plain(self.objects[key].raw)))

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        found = []
        for (resource, ns, _), obj in self.objects.items():
            if str(resource.plural) == "events" and ns == namespace and not obj.deleted:
                event = _plain(obj.raw)
                if (event.get("involvedObject") or {}).get("name") == name:
                    found.append(event)
        return found


_PARSE_PATH = parsing.parse_path


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads ``/api/v1/namespaces[/<name>]`` -- the Namespace objects themselves
    -- as a namespace prefix with no resource, and fails every list, watch and create of
    Namespaces with a 500. Installed over kmock's parser for the tests (see conftest)."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))):
        return parsing.ParsedPath("", "v1", "namespaces", None,
                                  parts[3] if len(parts) > 3 else None,
                                  parts[4] if len(parts) > 4 else None)
    return _PARSE_PATH(path)


def _plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
# What the operator watches or writes, as discovery describes it (kopf resolves its
# handlers' resources through discovery; the CRD list is what kopf observes for new ones).
RESOURCES: dict[str, dict[str, Any]] = {
    "v1/namespaces": {"kind": "Namespace", "singular": "namespace", "namespaced": False},
    "v1/configmaps": {"kind": "ConfigMap", "singular": "configmap", "namespaced": True},
    "v1/events": {"kind": "Event", "singular": "event", "namespaced": True},
    "apps/v1/deployments": {"kind": "Deployment", "singular": "deployment",
                            "namespaced": True, "subresources": {"status", "scale"}},
    "autoscaling/v2/horizontalpodautoscalers": {
        "kind": "HorizontalPodAutoscaler", "singular": "horizontalpodautoscaler",
        "namespaced": True, "subresources": {"status"}},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition", "singular": "customresourcedefinition",
        "namespaced": False, "subresources": {"status"}},
    CHANGEAPPROVALS: {"kind": "ChangeApproval", "singular": "changeapproval",
                      "namespaced": True, "subresources": {"status"}, "shortnames": {"cga"}},
}


def declare_resources(kube: FakeKube) -> None:
    for name, info in RESOURCES.items():
        kube.resources[name] = {"verbs": VERBS, **info}
