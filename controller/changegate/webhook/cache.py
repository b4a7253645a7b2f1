"""The webhook's state: list+watch through `kubernetes.aio` (KubeCache), or a directory
(StaticSource, for `serve --static`). Both hand out the core's immutable Snapshot.

Each watch event swaps in a new Snapshot; a request never waits for the cache, it decides
on the snapshot it finds. Cost with 10,000 ChangeApprovals: an event rebuilds only its
namespace's tuple and copies the outer namespace->tuple dict (one entry per namespace);
every other tuple, the namespaces mapping, and the parsed trust store and policy are
shared with the previous Snapshot. Approvals are kept compact (changegate.webhook.compact): most of
an approval's memory is its manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from changegate.core.errors import ChangeGateError, PolicyError, TrustStoreError
from changegate.core.policy import Policy, load_policy
from changegate.core.snapshot import (
    POLICY_KEY,
    TRUST_KEY,
    ApprovalObject,
    NamespaceInfo,
    ProcessConfig,
    Snapshot,
)
from changegate.core.trust import TrustStore, load_trust_store
from changegate.files import snapshot_from_dir
from changegate.kube import AsyncKube, approvals_path, object_path
from changegate.webhook import metrics
from changegate.webhook.compact import compact_approval
from changegate.webhook.poll import poll
from changegate.webhook.readthrough import ReadThrough

if TYPE_CHECKING:  # not imported for serve --static, which watches nothing
    from changegate.webhook.watch import FeedRunner

log = logging.getLogger("changegate.webhook.cache")

# Read-throughs (changegate.webhook.readthrough) listing at the same time, over all namespaces.
READ_THROUGH_PARALLEL = 2


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class KubeCache:
    """Watches ChangeApprovals, Namespaces, HPAs, and the controller namespace's ConfigMaps
    (trust store, policy, ledger), and keeps `snapshot()` current."""

    def __init__(self, api: AsyncKube, process: ProcessConfig, *,
                 watch_seconds: tuple[int, int] | None = None) -> None:
        from changegate.webhook.watch import Feed, FeedRunner

        self.api = api
        self.process = process
        self._approvals: dict[str, dict[str, ApprovalObject]] = {}
        # *_view: what snapshots hold. Replaced on change, never mutated once published.
        self._approval_view: dict[str, tuple[ApprovalObject, ...]] = {}
        self._ns_view: dict[str, NamespaceInfo] = {}
        self._ledger_view: frozenset[str] = frozenset()
        self._hpa_view: frozenset[tuple[str, str]] = frozenset()
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._configmaps: dict[str, dict[str, Any]] = {}  # name -> data
        self._ledger: dict[str, frozenset[str]] = {}
        self._hpas: dict[tuple[str, str], tuple[str, str]] = {}
        self._trust_text: str | None = None
        self._policy_text: str | None = None
        self._trust: TrustStore | None = None
        self._policy: Policy | None = None
        self._trust_error = self._policy_error = "not loaded yet"
        self._snapshot = Snapshot(trust=None, policy=None, process=process, ready=False)
        self.generation = 0  # snapshots published so far (shown by /readyz)
        self._tasks: list[asyncio.Task[None]] = []
        self._read_through = ReadThrough(self._list_namespace)
        # A namespace the watch has not brought yet (created a moment ago): one GET.
        self._namespace_reads = ReadThrough(self._get_namespace)
        self._read_slots = asyncio.Semaphore(READ_THROUGH_PARALLEL)
        feeds = [
            Feed("changeapprovals", approvals_path(None), convert=self._approval_from,
                 on_list=self._list_approvals, on_event=self._approval_event),
            Feed("namespaces", "/api/v1/namespaces", convert=NamespaceInfo.from_object,
                 on_list=self._list_namespaces, on_event=self._namespace_event),
            Feed("configmaps", object_path("v1", "ConfigMap", process.namespace),
                 convert=self._configmap_from, on_list=self._list_configmaps,
                 on_event=self._configmap_event),
            Feed("horizontalpodautoscalers", "/apis/autoscaling/v2/horizontalpodautoscalers",
                 convert=self._hpa_from, on_list=self._list_hpas, on_event=self._hpa_event),
        ]
        extra = {"watch_seconds": watch_seconds} if watch_seconds else {}
        self.runners: list[FeedRunner] = [FeedRunner(api, f, on_synced=self._synced, **extra)
                                          for f in feeds]
        self._ready = False

    # -- StateSource ----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        # Read on every request; a feed once listed stays listed (a relist serves the last
        # state meanwhile), so once all are, that is remembered.
        if not self._ready:
            self._ready = all(r.listed for r in self.runners)
        return self._ready

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def not_ready_reason(self) -> str:
        waiting = [r.feed.name for r in self.runners if not r.listed]
        if not waiting:
            return ""
        errors = [f"{r.feed.name}: {r.last_error}" for r in self.runners
                  if r.last_error and not r.listed]
        return ("waiting for the first list of " + ", ".join(waiting)
                + (f"; last error: {errors[0]}" if errors else ""))

    def may_read_through(self, namespace: str) -> bool:
        return not self._read_through.refuses(namespace)

    async def read_through(self, namespace: str, timeout: float
                           ) -> tuple[ApprovalObject, ...] | None:
        return await self._read_through(namespace, timeout)  # see changegate.webhook.readthrough

    def may_look_up_namespace(self, name: str) -> bool:
        return not self._namespace_reads.refuses(name)

    async def look_up_namespace(self, name: str, timeout: float) -> NamespaceInfo | None:
        """The Namespace as the API server has it now (None: not found, or no answer in
        time). For the one decision that asked: the watch brings it to the cache, and a
        result inserted here could be older than an event the watch already delivered."""
        return await self._namespace_reads(name, timeout)

    async def _get_namespace(self, name: str, timeout: float) -> NamespaceInfo | None:
        async with self._read_slots:
            found = await self.api.get(f"/api/v1/namespaces/{quote(name, safe='')}",
                                       timeout=timeout)
        return None if found is None else NamespaceInfo.from_object(found)

    async def _list_namespace(self, namespace: str, timeout: float
                              ) -> tuple[ApprovalObject, ...]:
        async with self._read_slots:
            found = (await self.api.call("GET", approvals_path(namespace),
                                         timeout=timeout)).body
        items = (found or {}).get("items") or []
        # Used for one decision and dropped: not worth compacting.
        return tuple(ApprovalObject.from_object(o) for o in items)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._publish(gauges=True)
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.runners]

    async def stop(self) -> None:
        await self._read_through.close()
        await self._namespace_reads.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await task
        self._tasks = []
        await self.api.close()

    def _synced(self) -> None:
        if self.ready:
            log.info("caches synced", extra={"fields": {
                "changeapprovals": sum(len(v) for v in self._approvals.values()),
                "namespaces": len(self._namespaces)}})
        self._publish(gauges=True)

    def _publish(self, *, gauges: bool = False) -> None:
        self.generation += 1
        self._snapshot = Snapshot(
            trust=self._trust, policy=self._policy, process=self.process,
            namespaces=self._ns_view, approvals=self._approval_view,
            ledger=self._ledger_view, hpa_targets=self._hpa_view,
            trust_error=self._trust_error, policy_error=self._policy_error,
            ready=self.ready)
        if gauges:
            metrics.observe_snapshot(self._snapshot, synced=self.ready)

    # -- ChangeApprovals ------------------------------------------------------------------
    def _approval_from(self, obj: dict[str, Any]) -> ApprovalObject:
        """A relist keeps the objects it already holds (same resourceVersion): no churn."""
        namespace, name = _meta(obj)
        old = self._approvals.get(namespace, {}).get(name)
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if old is not None and old.resource_version == version:
            return old
        return compact_approval(obj)

    def _list_approvals(self, items: list[ApprovalObject]) -> None:
        fresh: dict[str, dict[str, ApprovalObject]] = {}
        for approval in items:
            fresh.setdefault(approval.namespace, {})[approval.name] = approval
        self._approvals = fresh
        self._approval_view = {ns: tuple(d.values()) for ns, d in fresh.items()}
        self._publish()

    def _approval_event(self, kind: str, obj: dict[str, Any]) -> None:
        namespace, name = _meta(obj)
        bucket = self._approvals.setdefault(namespace, {})
        if kind == "DELETED":
            bucket.pop(name, None)
        else:
            bucket[name] = compact_approval(obj)
        view = dict(self._approval_view)  # copy-on-write: old snapshots keep theirs
        if bucket:
            view[namespace] = tuple(bucket.values())
        else:
            view.pop(namespace, None)
            self._approvals.pop(namespace, None)
        self._approval_view = view
        self._publish()

    # -- Namespaces -----------------------------------------------------------------------
    def _list_namespaces(self, items: list[NamespaceInfo]) -> None:
        self._namespaces = {i.name: i for i in items}
        self._ns_view = dict(self._namespaces)
        self._publish(gauges=True)

    def _namespace_event(self, kind: str, obj: dict[str, Any]) -> None:
        info = NamespaceInfo.from_object(obj)
        if kind == "DELETED":
            self._namespaces.pop(info.name, None)
        else:
            self._namespaces[info.name] = info
        self._ns_view = dict(self._namespaces)
        self._publish(gauges=True)

    # -- HPAs (autoscaled Deployments keep replicas out of the digest) --------------------
    def _hpa_target(self, obj: dict[str, Any]) -> tuple[str, str] | None:
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or not ref.get("name"):
            return None
        return (_meta(obj)[0], str(ref["name"]))

    def _hpa_from(self, obj: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]] | None:
        target = self._hpa_target(obj)
        return None if target is None else (_meta(obj), target)

    def _list_hpas(self, items: list[tuple[tuple[str, str], tuple[str, str]]]) -> None:
        self._hpas = dict(items)
        self._hpa_view = frozenset(self._hpas.values())
        self._publish()

    def _hpa_event(self, kind: str, obj: dict[str, Any]) -> None:
        target = self._hpa_target(obj)
        if kind == "DELETED" or target is None:
            self._hpas.pop(_meta(obj), None)
        else:
            self._hpas[_meta(obj)] = target
        self._hpa_view = frozenset(self._hpas.values())
        self._publish()

    # -- ConfigMaps in the controller namespace: trust store, policy, ledger --------------
    def _relevant(self, name: str) -> bool:
        p = self.process
        return name in (p.trust_configmap, p.policy_configmap) or p.is_ledger(name)

    def _configmap_from(self, obj: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        name = _meta(obj)[1]
        return (name, obj.get("data") or {}) if self._relevant(name) else None

    def _list_configmaps(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        self._configmaps = dict(items)
        self._reload_config()

    def _configmap_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = _meta(obj)[1]
        if not self._relevant(name):
            return
        if kind == "DELETED":
            self._configmaps.pop(name, None)
        else:
            self._configmaps[name] = obj.get("data") or {}
        self._reload_config()

    def _reload_config(self) -> None:
        p = self.process
        where = f"{p.namespace}/"
        trust_cm = self._configmaps.get(p.trust_configmap)
        trust_text = None if trust_cm is None else trust_cm.get(TRUST_KEY)
        if trust_cm is None:
            self._trust, self._trust_text = None, None
            self._trust_error = f"trust store ConfigMap {where}{p.trust_configmap} not found"
        elif trust_text is None:
            self._trust, self._trust_text = None, None
            self._trust_error = (f"trust store ConfigMap {where}{p.trust_configmap} has no key "
                                 f"{TRUST_KEY}")
        elif trust_text != self._trust_text:  # parse only what changed: keys cost to load
            self._trust_text = trust_text
            try:
                self._trust, self._trust_error = load_trust_store(trust_text), ""
            except TrustStoreError as exc:
                self._trust, self._trust_error = None, str(exc)
        policy_cm = self._configmaps.get(p.policy_configmap)
        policy_text = None if policy_cm is None else policy_cm.get(POLICY_KEY)
        if policy_cm is None or policy_text is None:
            self._policy, self._policy_text = None, None
            self._policy_error = (f"policy ConfigMap {where}{p.policy_configmap} "
                                  + ("not found" if policy_cm is None else
                                     f"has no key {POLICY_KEY}"))
        elif policy_text != self._policy_text:
            self._policy_text = policy_text
            try:
                self._policy, self._policy_error = load_policy(policy_text), ""
            except PolicyError as exc:
                self._policy, self._policy_error = None, str(exc)
        nonces: set[str] = set()
        for name, data in self._configmaps.items():
            if p.is_ledger(name):
                nonces.update(data)
        self._ledger_view = frozenset(nonces)
        self._publish(gauges=True)


class StaticSource:
    """`serve --static DIR`: the same Snapshot type, from files; reloaded when they change
    (polled, like the TLS files), keeping the last good state if a new one does not load."""

    ready = True

    def __init__(self, directory: str, process: ProcessConfig, *, poll_seconds: float = 2.0):
        self.directory = Path(directory)
        self.process = process
        self.poll_seconds = poll_seconds
        self._seen = self._signature()
        self._snapshot = snapshot_from_dir(self.directory, process)  # errors stop the start
        self.generation = 0
        self._publish()

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        files = sorted([*self.directory.glob("*.yaml"), *self.directory.glob("*.json")])
        out = []
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _publish(self) -> None:
        self.generation += 1
        metrics.observe_snapshot(self._snapshot, synced=True)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def not_ready_reason(self) -> str:
        return ""

    def may_read_through(self, namespace: str) -> bool:
        return False  # the files are the whole truth: no second look

    def may_look_up_namespace(self, name: str) -> bool:
        return False  # likewise: a namespace not in the files does not exist

    async def look_up_namespace(self, name: str, timeout: float) -> NamespaceInfo | None:
        return None

    async def read_through(self, namespace: str, timeout: float
                           ) -> tuple[ApprovalObject, ...] | None:
        return None

    def check(self, *, force: bool = False) -> bool:
        """Reload if a file changed (or always, with force: SIGHUP). True when reloaded."""
        seen = self._signature()
        if seen == self._seen and not force:
            return False
        self._seen = seen
        try:
            self._snapshot = snapshot_from_dir(self.directory, self.process)
        except ChangeGateError as exc:
            log.warning("static state does not load, keeping the last good one",
                        extra={"fields": {"error": str(exc)}})
            return False
        self._publish()
        log.info("static state reloaded", extra={"fields": {"directory": str(self.directory)}})
        return True

    async def run(self) -> None:
        await poll(self.check, self.poll_seconds, log, "static reload")
