"""State from files: what `changegate check` and `changegate serve --static DIR` decide on.

The result is the same Snapshot type the cache fills from the API server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from changegate.core.errors import ChangeGateError, PolicyError, TrustStoreError
from changegate.core.policy import load_policy
from changegate.core.snapshot import (
    ApprovalObject,
    NamespaceInfo,
    ProcessConfig,
    Snapshot,
    ledger_nonces,
)
from changegate.core.trust import load_trust_store


def read_text(path: str | Path) -> str:
    """A file's text; "-" is standard input (`helm template ... | changegate request -f -`)."""
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ChangeGateError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ChangeGateError(f"{path}: cannot read ({exc})") from exc


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in a YAML or JSON file; `kind: List` and `---` are unrolled."""
    text = read_text(path)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ChangeGateError(f"{path}: not valid YAML or JSON ({first})") from exc
    out: list[dict[str, Any]] = []
    for doc in _unroll(docs):
        if not isinstance(doc, dict):
            found = type(doc).__name__
            raise ChangeGateError(f"{path}: expected Kubernetes objects, found {found}")
        out.append(doc)
    return out


def _unroll(docs: Iterable[Any]) -> Iterator[Any]:
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind", "").endswith("List") and "items" in doc:
            yield from _unroll(doc.get("items") or [])
        else:
            yield doc


def load_json(path: str | Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ChangeGateError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def group_approvals(objects: Iterable[dict[str, Any]]) -> dict[str, tuple[ApprovalObject, ...]]:
    grouped: dict[str, list[ApprovalObject]] = {}
    for obj in objects:
        if obj.get("kind") == "ChangeApproval":
            approval = ApprovalObject.from_object(obj)
            grouped.setdefault(approval.namespace, []).append(approval)
    return {ns: tuple(items) for ns, items in grouped.items()}


T = TypeVar("T")


def _parsed(load: Callable[[Any], T], text: str | None, error: type[Exception],
            missing: str | None) -> tuple[T | None, str]:
    """(the loaded value, "") or (None, why): kept as an error, so decisions fail closed.
    ``missing`` is the error for no text at all (None: the loader's defaults apply)."""
    if text is None and missing is not None:
        return None, missing
    try:
        return load(text), ""
    except error as exc:
        return None, str(exc)


def build_snapshot(*, trust_text: str | None, policy_text: str | None,
                   objects: Iterable[dict[str, Any]] = (),
                   ledger: Iterable[dict[str, Any]] = (),
                   process: ProcessConfig | None = None,
                   policy_required: bool = False, assume_tier1: bool = True) -> Snapshot:
    """A Snapshot; an invalid trust store or policy is kept as an error (fail closed).
    Offline, a namespace no file describes counts as tier-1 (``assume_tier1``, SPEC §10)."""
    objects = list(objects)
    trust, trust_error = _parsed(load_trust_store, trust_text, TrustStoreError,
                                 "trust store missing")
    policy, policy_error = _parsed(load_policy, policy_text, PolicyError,
                                   "policy missing" if policy_required else None)
    namespaces = {info.name: info for info in
                  (NamespaceInfo.from_object(o) for o in objects if o.get("kind") == "Namespace")}
    hpa_targets = frozenset(
        (str((o.get("metadata") or {}).get("namespace", "")),
         str(((o.get("spec") or {}).get("scaleTargetRef") or {}).get("name", "")))
        for o in objects if o.get("kind") == "HorizontalPodAutoscaler"
        and ((o.get("spec") or {}).get("scaleTargetRef") or {}).get("kind") == "Deployment")
    return Snapshot(
        trust=trust, policy=policy, process=process or ProcessConfig(),
        namespaces=namespaces, approvals=group_approvals(objects),
        ledger=ledger_nonces(list(ledger)), hpa_targets=hpa_targets,
        trust_error=trust_error, policy_error=policy_error, assume_tier1=assume_tier1)


def snapshot_from_dir(directory: str | Path, process: ProcessConfig | None = None) -> Snapshot:
    """`serve --static DIR`: trust.yaml, policy.yaml, ledger.yaml (optional), other *.yaml."""
    root = Path(directory)
    if not root.is_dir():
        raise ChangeGateError(f"{directory}: not a directory")
    trust_path, policy_path, ledger_path = (root / "trust.yaml", root / "policy.yaml",
                                            root / "ledger.yaml")
    objects: list[dict[str, Any]] = []
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*.json")):
        if path in (trust_path, policy_path, ledger_path):
            continue
        objects.extend(load_documents(path))
    return build_snapshot(
        trust_text=read_text(trust_path) if trust_path.exists() else None,
        policy_text=read_text(policy_path) if policy_path.exists() else None,
        objects=objects,
        ledger=load_documents(ledger_path) if ledger_path.exists() else (),
        process=process)
