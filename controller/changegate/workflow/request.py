"""`changegate request`: from the documents a release writes to one ChangeApproval per change.

Every change is computed before any ChangeApproval is created, so a bad document late in
a render leaves nothing half requested.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from changegate.core.compose import (
    approval_name,
    change_approval,
    manifest_for,
    statement_bytes,
)
from changegate.core.digest import ABSENT, digest
from changegate.core.dsse import PrivateKey, sign_envelope
from changegate.core.errors import ChangeGateError
from changegate.core.statement import PLURALS, format_time
from changegate.files import load_documents
from changegate.kube import ApiError, Kube, approvals_path, object_path
from changegate.workflow.site import Site
from changegate.workflow.writes import (
    AS_RETURNED,
    RESTART,
    SERVER_SIDE,
    config_write,
    dry_run,
    identity,
    meta,
    restart_write,
)

RECORD_LABEL = "changegate.io/record"
WRITE_ANNOTATION = "changegate.io/write"
MANAGER_ANNOTATION = "changegate.io/field-manager"
FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Change:
    api_version: str
    kind: str
    namespace: str
    name: str
    operation: str  # CREATE | UPDATE | DELETE
    uid: str
    from_digest: str
    to_digest: str
    manifest: dict[str, Any] | None

    @property
    def target(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_gated: list[str] = field(default_factory=list)


def read_documents(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Files and directories (their *.yaml, *.yml, *.json, like `kubectl apply -f DIR`)."""
    docs: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES)
            if not files:
                raise ChangeGateError(f"{raw}: no .yaml, .yml or .json files in the directory")
            for file in files:
                docs.extend(load_documents(file))
        else:
            docs.extend(load_documents(raw))
    return docs


def place(doc: dict[str, Any], namespace: str, explicit: bool, source: str = "") -> None:
    """Give a document its namespace the way kubectl does (and refuse a contradiction)."""
    m = doc.setdefault("metadata", {})
    if not isinstance(m, dict) or not m.get("name"):
        raise ChangeGateError(f"{source or 'a document'}: {doc.get('kind')} without metadata.name")
    own = m.get("namespace")
    if own and explicit and own != namespace:
        raise ChangeGateError(f"{doc.get('kind')} {m['name']} is in namespace {own}, which "
                              f"does not match -n {namespace}")
    m["namespace"] = own or namespace


def _digests(site: Site, api: Kube, obj: Mapping[str, Any] | None, namespace: str,
             name: str, kind: str) -> str:
    auto = kind == "Deployment" and site.autoscaled(api, namespace, name)
    return digest(obj, site.rules, autoscaled=auto)


def plan_changes(api: Kube, site: Site, docs: Iterable[dict[str, Any]], *, mode: str,
                 field_manager: str, force: bool) -> Plan:
    plan = Plan()
    for doc in docs:
        api_version, kind, ns, name = identity(doc)
        if (api_version, kind) not in PLURALS:
            plan.not_gated.append(f"{kind.lower() or '?'}/{name}")
            continue
        live = api.get(object_path(api_version, kind, ns, name))
        if mode == AS_RETURNED:
            result: dict[str, Any] | None = doc
        else:
            write = config_write(doc, live, mode, field_manager=field_manager, force=force)
            result, _ = dry_run(api, write)
        _add(plan, api, site, live, result, api_version, kind, ns, name)
    return plan


def plan_restart(api: Kube, site: Site, namespace: str, target: str, at: datetime) -> Plan:
    kind, _, name = target.partition("/")
    if kind.lower() not in ("deployment", "deployments", "deploy") or not name:
        raise ChangeGateError(f"--restart takes deployment/NAME, not {target!r}")
    live = api.get(object_path("apps/v1", "Deployment", namespace, name))
    if live is None:
        raise ChangeGateError(f"deployment {namespace}/{name} does not exist")
    result, _ = dry_run(api, restart_write(live, format_time(at)))
    plan = Plan()
    _add(plan, api, site, live, result, "apps/v1", "Deployment", namespace, name)
    return plan


def plan_prune(api: Kube, site: Site, plan: Plan, docs: list[dict[str, Any]],
               namespaces: Iterable[str], selector: str) -> None:
    """The DELETEs `kubectl apply --prune -l SELECTOR` would send: objects of the gated kinds
    that were applied before (they carry the last-applied annotation) and match the
    selector, but are no longer in the documents."""
    keep = {identity(d) for d in docs}
    for ns in sorted(set(namespaces)):
        for (api_version, kind) in PLURALS:
            found = api.call("GET", object_path(api_version, kind, ns),
                             query={"labelSelector": selector}).body or {}
            for item in found.get("items") or []:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                key = (api_version, kind, ns, str(meta(item).get("name", "")))
                annotations = meta(item).get("annotations") or {}
                if key in keep or "kubectl.kubernetes.io/last-applied-configuration" not in \
                        annotations:
                    continue
                _add(plan, api, site, item, None, api_version, kind, ns, key[3])


def _add(plan: Plan, api: Kube, site: Site, live: Mapping[str, Any] | None,
         result: Mapping[str, Any] | None, api_version: str, kind: str, ns: str,
         name: str) -> None:
    before = _digests(site, api, live, ns, name, kind)
    after = _digests(site, api, result, ns, name, kind)
    label = f"{kind.lower()}/{name}"
    if before == after:
        plan.unchanged.append(label)
        return
    operation = "CREATE" if live is None else "DELETE" if result is None else "UPDATE"
    uid = ABSENT if live is None else str(meta(live).get("uid") or ABSENT)
    plan.changes.append(Change(api_version, kind, ns, name, operation, uid, before, after,
                               manifest_for(result) if result is not None else None))


def approval_bodies(site: Site, plan: Plan, *, record: str, url: str | None, user: str,
                    now: datetime, lifetime: timedelta, rollout: dict[str, Any], mode: str,
                    field_manager: str, assistance: str | None = None
                    ) -> list[tuple[dict[str, Any], Change]]:
    """One unsigned ChangeApproval per change, as `request` creates it (or writes it out)."""
    out: list[tuple[dict[str, Any], Change]] = []
    for change in plan.changes:
        this_rollout = rollout if change.kind == "Deployment" and change.operation != "DELETE" \
            else {"strategy": "direct"}
        body = change_approval(
            namespace=change.namespace, name=approval_name(record, change.kind, change.name),
            cluster=site.cluster,
            target={"apiVersion": change.api_version, "kind": change.kind, "name": change.name,
                    "uid": change.uid},
            operation=change.operation, from_digest=change.from_digest,
            to_digest=change.to_digest, record_id=record, record_url=url, requested_by=user,
            issued_at=now, expires_at=now + lifetime, manifest=change.manifest,
            rollout=this_rollout, assistance=assistance, nonce=str(uuid.uuid4()))
        m = body["metadata"]
        m["labels"] = {RECORD_LABEL: approval_name(record, "", "")}
        m["annotations"] = {WRITE_ANNOTATION: RESTART if mode == RESTART else mode}
        if mode == SERVER_SIDE:
            m["annotations"][MANAGER_ANNOTATION] = field_manager
        out.append((body, change))
    return out


def create_approvals(api: Kube, bodies: list[tuple[dict[str, Any], Change]]
                     ) -> list[tuple[str, Change]]:
    return [(_create(api, body), change) for body, change in bodies]


def write_approval_files(bodies: list[tuple[dict[str, Any], Change]], directory: Path,
                         key: PrivateKey) -> list[tuple[str, Change]]:
    """GitOps: the ChangeApprovals as files (one per approval, `<namespace>.<name>.yaml`),
    each signed by the requester, for approvers to sign offline (`approve -f`) and a trusted
    creator to create from Git. Existing files are not overwritten: a signed file in Git is
    replaced by a new request under a new record, never silently."""
    directory.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, Change]] = []
    for body, change in bodies:
        m = body["metadata"]
        path = directory / f"{m['namespace']}.{m['name']}.yaml"
        if path.exists():
            raise ChangeGateError(f"{path} exists: request under a new record, or remove it")
        body["spec"]["signatures"] = [sign_envelope(key, statement_bytes(body))]
        path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        out.append((str(path), change))
    return out


def _create(api: Kube, body: dict[str, Any]) -> str:
    """POST; on a name collision, try the same name with a short random suffix."""
    base = body["metadata"]["name"]
    for attempt in range(5):
        if attempt:
            body["metadata"]["name"] = f"{base[:57]}-{secrets.token_hex(2)}"
        try:
            api.call("POST", approvals_path(body["metadata"]["namespace"]), body=body)
        except ApiError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                continue
            raise
        return str(body["metadata"]["name"])
    raise ChangeGateError(f"could not find a free name for ChangeApproval {base}")
