"""What the operator last saw of each gated object, kept in the API (SPEC §7a).

Sixteen ConfigMaps ``changegate-record-0`` ... ``-f`` in the controller namespace, like
the ledger: one key per gated object of a tier-1 namespace (``o`` + 16 hex digits of the
object's kind/namespace/name; the value is explain.Seen as JSON, ~300 bytes, so 1 MiB a
shard holds ~3,000 objects and the sixteen ~50,000), and one key per tier-1 namespace
(``n`` + 16 hex digits; the value says since when the operator watches it: every object
there then was recorded as a baseline, so an object the record lacks was created since,
and its creation is a transition to explain).

Why ConfigMaps in the controller namespace and not an annotation on each object: whoever
can write the object (the very writer that got past a deleted webhook) could write the
annotation too and make the change look recorded. The controller namespace is writable
only by the operator and the admins, webhook or no webhook; and its objects are out of
every digest. Why not memory: a change made while the operator was down, or whose watch
event it missed, must still be seen; kopf lists every object again at start, and the
record says what each looked like before.

The record is read once at startup into memory and written through: the operator is the
one writer (one active replica), and each write is a merge patch with the ConfigMap's
resourceVersion as a precondition, batched per shard by ``flush``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import datetime

from changegate.core.errors import StatementError
from changegate.core.statement import format_time, parse_time
from changegate.operator.api import Api, ApiError, object_path
from changegate.operator.explain import Seen, short

LOG = logging.getLogger("changegate.operator.record")

PREFIX = "changegate-record-"
SHARDS = "0123456789abcdef"
NAMES = tuple(PREFIX + digit for digit in SHARDS)
MAX_ATTEMPTS = 8
LABELS = {"app.kubernetes.io/name": "changegate", "app.kubernetes.io/component": "record"}


def object_key(kind: str, namespace: str, name: str) -> str:
    return "o" + short(f"{kind}/{namespace}/{name}")


def namespace_key(namespace: str) -> str:
    return "n" + short(namespace)


def _shard(key: str) -> str:
    return PREFIX + key[1]


class Record:
    """The in-memory copy of the record ConfigMaps, written through."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.objects: dict[str, Seen] = {}
        self.since: dict[str, datetime] = {}  # tier-1 namespace -> watched since
        self._pending: dict[str, dict[str, str | None]] = {}  # shard -> key -> value
        self._locks: dict[str, asyncio.Lock] = {}
        self.loaded = False

    def lock(self, name: str) -> asyncio.Lock:
        """Held while a namespace is onboarded (its objects' events wait for the baseline),
        and while one object's transition is judged. Locks of objects since deleted stay:
        a few dozen bytes each, gone at the next restart."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, api: Api) -> None:
        """Read (and create missing) shards. Unreadable values are dropped: the object is
        then a baseline again, never a false alarm."""
        for name in NAMES:
            path = object_path("v1", "ConfigMap", self.namespace, name)
            found = await api.get(path)
            if found is None:
                try:
                    await api.create(object_path("v1", "ConfigMap", self.namespace),
                                     _configmap(self.namespace, name))
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                continue
            for key, value in (found.get("data") or {}).items():
                self._load_one(key, value)
        self.loaded = True
        LOG.info("record loaded: %d objects in %d tier-1 namespaces", len(self.objects),
                 len(self.since))

    def _load_one(self, key: str, value: str) -> None:
        if key.startswith("o"):
            entry = Seen.from_json(value)
            if entry is not None:
                self.objects[key] = entry
        elif key.startswith("n"):
            try:
                doc = json.loads(value)
                self.since[str(doc["namespace"])] = parse_time(str(doc["since"]))
            except (ValueError, KeyError, TypeError, StatementError):
                return

    def get(self, kind: str, namespace: str, name: str) -> Seen | None:
        return self.objects.get(object_key(kind, namespace, name))

    def put(self, entry: Seen) -> None:
        key = object_key(entry.kind, entry.namespace, entry.name)
        if self.objects.get(key) == entry:
            return
        self.objects[key] = entry
        self._pending.setdefault(_shard(key), {})[key] = entry.to_json()

    def drop(self, kind: str, namespace: str, name: str) -> None:
        key = object_key(kind, namespace, name)
        if self.objects.pop(key, None) is not None:
            self._pending.setdefault(_shard(key), {})[key] = None

    def watched_since(self, namespace: str, now: datetime) -> datetime:
        """When the operator began to watch this tier-1 namespace (recorded now, the
        first time)."""
        found = self.since.get(namespace)
        if found is None:
            found = self.since[namespace] = now
            key = namespace_key(namespace)
            self._pending.setdefault(_shard(key), {})[key] = json.dumps(
                {"namespace": namespace, "since": format_time(now)}, sort_keys=True)
        return found

    def in_namespace(self, namespace: str) -> Iterator[Seen]:
        return (s for s in list(self.objects.values()) if s.namespace == namespace)

    @property
    def dirty(self) -> bool:
        return any(self._pending.values())

    async def flush(self, api: Api) -> None:
        """Write what changed, one patch per shard. What fails stays pending for the next
        flush; what changes meanwhile is written next time."""
        for shard, changes in list(self._pending.items()):
            if not changes:
                continue
            batch = dict(changes)
            await _write(api, self.namespace, shard, batch)
            for key, value in batch.items():
                if changes.get(key) == value:
                    del changes[key]


def _configmap(namespace: str, name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS),
                         "annotations": {"changegate.io/description": (
                             "What the changegate operator last saw of each gated object "
                             "(SPEC §7a), written only by the operator: a digest change "
                             "nothing explains is an unexplained change.")}},
            "data": {}}


async def _write(api: Api, namespace: str, name: str, changes: dict[str, str | None]) -> None:
    path = object_path("v1", "ConfigMap", namespace, name)
    for _ in range(MAX_ATTEMPTS):
        found = await api.get(path)
        try:
            if found is None:
                body = _configmap(namespace, name)
                body["data"] = {k: v for k, v in changes.items() if v is not None}
                await api.create(object_path("v1", "ConfigMap", namespace), body)
                return
            version = (found.get("metadata") or {}).get("resourceVersion")
            await api.merge_patch(path, {"metadata": {"resourceVersion": version},
                                         "data": changes})
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
    raise ApiError(409, "Conflict", f"{namespace}/{name} kept changing under "
                                    f"{MAX_ATTEMPTS} attempts")
