"""The ledger of used approvals (SPEC §4 rule 5, §9).

Sixteen ConfigMaps ``changegate-ledger-0`` ... ``-f`` in the controller namespace, chosen
by the nonce's first hex digit, one key per used nonce, its value
``{"approval": "<ns>/<name>", "uid": "<ChangeApproval uid>", "target": "<subject>",
"expiresAt": "..."}``. The webhook refuses any ChangeApproval whose nonce is a key here.

Writes are read-modify-write with the ConfigMap's resourceVersion as a precondition
(a merge patch carrying ``metadata.resourceVersion``): two writers never lose each
other's nonce, the loser re-reads and tries again. Sixteen shards keep each ConfigMap
small (a nonce is ~150 bytes; 1 MiB holds ~6,000 live approvals per shard) and spread
the conflicts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from changegate.core.errors import StatementError
from changegate.core.statement import parse_time
from changegate.operator.api import Api, ApiError, object_path

LOG = logging.getLogger("changegate.operator.ledger")

PREFIX = "changegate-ledger-"
SHARDS = "0123456789abcdef"
NAMES = tuple(PREFIX + digit for digit in SHARDS)
# A nonce must be a ConfigMap key, and the one string the webhook compares: the canonical
# lowercase UUID. (The statement parser also accepts "{...}" and "urn:uuid:..." forms;
# those cannot be keys, so the operator cannot record them -- see status.NONCE_PROBLEM.)
CANONICAL_NONCE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Entries are pruned only this long after their expiresAt: the webhook refuses an expired
# approval by its own clock, and if the operator's clock ran ahead of the webhook's, an
# entry pruned at the operator's "expired" could still be usable at the webhook's "now".
PRUNE_GRACE = timedelta(minutes=10)
# Conflicts mean another writer got there first; each retry re-reads. Eight rounds is far
# more than one operator replica and the odd manual edit ever need.
MAX_ATTEMPTS = 8
LABELS = {"app.kubernetes.io/name": "changegate", "app.kubernetes.io/component": "ledger"}


class LedgerError(Exception):
    """The ledger could not be written (the API refused or kept conflicting)."""


@dataclass(frozen=True)
class LedgerEntry:
    approval: str  # "<namespace>/<name>" of the ChangeApproval that used the nonce
    uid: str  # that ChangeApproval's uid
    target: str  # the statement's subject, k8s://apps/v1/namespaces/ns/deployments/name
    expiresAt: str  # the statement's expiresAt: the entry can go after it (+ PRUNE_GRACE)

    def to_json(self) -> str:
        return json.dumps({"approval": self.approval, "uid": self.uid, "target": self.target,
                           "expiresAt": self.expiresAt}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LedgerEntry:
        """Never raises: an unreadable entry still marks its nonce used (fail closed)."""
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return cls("?", "", "", "")
        return cls(*(str(doc.get(k) or "") for k in ("approval", "uid", "target", "expiresAt")))


def shard(nonce: str) -> str:
    """The ledger ConfigMap that holds ``nonce``."""
    if not CANONICAL_NONCE.match(nonce):
        raise LedgerError(f"nonce {nonce!r} is not a lowercase UUID; it cannot be recorded")
    return PREFIX + nonce[0]


def expired_keys(data: Mapping[str, str], now: datetime) -> list[str]:
    """Keys whose approval expired more than PRUNE_GRACE ago. Unreadable ones stay."""
    gone = []
    for key, value in data.items():
        try:
            expires = parse_time(LedgerEntry.from_json(value).expiresAt)
        except StatementError:
            continue
        if expires + PRUNE_GRACE < now:
            gone.append(key)
    return sorted(gone)


def _configmap(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS),
                         "annotations": {"changegate.io/description": (
                             "Used ChangeApproval nonces (SPEC §9), written only by the "
                             "changegate operator; the webhook refuses any nonce listed here.")}},
            "data": dict(data)}


async def _create(api: Api, namespace: str, name: str, data: dict[str, str]) -> None:
    await api.create(object_path("v1", "ConfigMap", namespace), _configmap(namespace, name, data))


async def ensure(api: Api, namespace: str, now: datetime) -> None:
    """Create missing shards and prune expired entries (at startup)."""
    for name in NAMES:
        path = object_path("v1", "ConfigMap", namespace, name)
        for _ in range(MAX_ATTEMPTS):
            found = await api.get(path)
            try:
                if found is None:
                    await _create(api, namespace, name, {})
                    LOG.info("created ledger ConfigMap %s/%s", namespace, name)
                else:
                    gone = expired_keys(found.get("data") or {}, now)
                    if gone:
                        await _patch(api, path, found, {k: None for k in gone})
                        LOG.info("pruned %d expired nonces from %s", len(gone), name)
                break
            except ApiError as exc:
                if exc.status != 409:  # 409: created or changed meanwhile; look again
                    raise


async def record(api: Api, namespace: str, nonce: str, entry: LedgerEntry,
                 now: datetime) -> LedgerEntry:
    """Record ``nonce`` as used by ``entry``; return what the ledger holds for it.

    Idempotent: if the nonce is already there (this approval recorded it before a
    restart, or another approval carrying a copy of the statement did), the stored
    entry is returned unchanged, and the caller compares it with its own.
    """
    name = shard(nonce)
    path = object_path("v1", "ConfigMap", namespace, name)
    for _ in range(MAX_ATTEMPTS):
        found = await api.get(path)
        try:
            if found is None:
                await _create(api, namespace, name, {nonce: entry.to_json()})
                return entry
            data = found.get("data") or {}
            if nonce in data:
                return LedgerEntry.from_json(data[nonce])
            changes: dict[str, str | None] = {k: None for k in expired_keys(data, now)}
            changes[nonce] = entry.to_json()
            await _patch(api, path, found, changes)
            return entry
        except ApiError as exc:
            if exc.status != 409:
                raise LedgerError(f"cannot write {namespace}/{name}: {exc}") from exc
            LOG.debug("ledger %s changed under us; reading it again", name)
    raise LedgerError(f"{namespace}/{name} kept changing under {MAX_ATTEMPTS} attempts")


async def _patch(api: Api, path: str, found: Mapping[str, object],
                 changes: Mapping[str, str | None]) -> None:
    meta = found.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    body: dict[str, object] = {"data": dict(changes)}
    if version:
        body["metadata"] = {"resourceVersion": version}
    await api.merge_patch(path, body)
