"""The frozen world ``decide()`` sees: what the cache (or a directory of files) holds.

The webhook's cache builds a new Snapshot on every watch event and swaps it in whole, so
a request never sees half an update; ``changegate check`` and ``serve --static`` build
one from files. Same type, same decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from changegate.core.policy import Policy
from changegate.core.trust import TrustStore

TRUST_KEY = "approvers.yaml"
POLICY_KEY = "policy.yaml"


@dataclass(frozen=True)
class ProcessConfig:
    """The process's own settings (chart values): valid even when a ConfigMap is broken."""

    namespace: str = "changegate"
    trust_configmap: str = "changegate-trust"
    policy_configmap: str = "changegate-policy"
    # The process's own settings (admin and break-glass groups) as the chart mounts them:
    # not read at admission, but guarded, or editing it would make anyone an admin.
    config_configmap: str = "changegate-config"
    operator_service_account: str = "system:serviceaccount:changegate:changegate-operator"
    policy_admin_groups: frozenset[str] = frozenset()
    break_glass_groups: frozenset[str] = frozenset()

    def is_ledger(self, name: str) -> bool:
        return name.startswith("changegate-ledger-")


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NamespaceInfo:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            terminating=bool(meta.get("deletionTimestamp")) or status.get("phase") == "Terminating",
        )


@dataclass(frozen=True)
class ApprovalObject:
    """A ChangeApproval as stored; ``spec`` stays the raw dict (the statement is what counts)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    spec: Mapping[str, Any]
    phase: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ApprovalObject:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=spec if isinstance(spec, dict) else {},
            phase=str((obj.get("status") or {}).get("phase") or ""),
        )

    # Derived once here, not per request: the webhook scans these on every decision.
    record_id: str = field(init=False, default="")
    target_key: tuple[str, str] = field(init=False, default=("", ""))
    # What verification reads (the spec without its manifest), hashed: the verification
    # memo's key, so relabelling (a new resourceVersion) re-verifies nothing. "" when the
    # spec cannot be serialised (then nothing is memoized).
    content_key: str = field(init=False, default="")

    def __post_init__(self) -> None:
        record = self.spec.get("changeRecord")
        target = self.spec.get("target")
        object.__setattr__(self, "record_id",
                           str(record.get("id", "")) if isinstance(record, dict) else "")
        object.__setattr__(self, "target_key", (
            (str(target.get("kind", "")), str(target.get("name", "")))
            if isinstance(target, dict) else ("", "")))
        try:
            blob = orjson.dumps({k: v for k, v in self.spec.items() if k != "manifest"},
                                option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, say
            return
        object.__setattr__(self, "content_key", hashlib.sha256(blob).hexdigest())


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision may read. ``trust``/``policy`` are None with an error when invalid."""

    trust: TrustStore | None
    policy: Policy | None
    process: ProcessConfig = ProcessConfig()
    namespaces: Mapping[str, NamespaceInfo] = field(default_factory=dict)
    approvals: Mapping[str, tuple[ApprovalObject, ...]] = field(default_factory=dict)
    ledger: frozenset[str] = frozenset()
    hpa_targets: frozenset[tuple[str, str]] = frozenset()  # (namespace, deployment name)
    trust_error: str = ""
    policy_error: str = ""
    ready: bool = True
    # Offline tools only (`check`, `serve --static`, SPEC §10): a namespace not given counts
    # as tier-1 with no annotations. The webhook's snapshot leaves it False: a namespace
    # its cache has not seen is denied, never judged by defaults (SPEC §5).
    assume_tier1: bool = False

    @property
    def config_error(self) -> str:
        if self.trust is None:
            return self.trust_error or "trust store missing"
        if self.policy is None:
            return self.policy_error or "policy missing"
        return ""

    def namespace(self, name: str) -> NamespaceInfo | None:
        """None for a namespace not seen (the caller denies); see ``assume_tier1``."""
        info = self.namespaces.get(name)
        if info is not None or not self.assume_tier1:
            return info
        labels = dict(self.policy.tierSelector) if self.policy else {}
        return NamespaceInfo(name, labels)

    def is_autoscaled(self, namespace: str, name: str) -> bool:
        """Listed by the policy, or the target of an HPA: replicas leave the digest."""
        if (namespace, name) in self.hpa_targets:
            return True
        # Most policies list none: then skip the scan, interpreted Python (pydantic).
        policy = self.policy
        return policy is not None and bool(policy.autoscaled) and policy.is_autoscaled(
            namespace, name)

    def approvals_in(self, namespace: str) -> tuple[ApprovalObject, ...]:
        return self.approvals.get(namespace, ())


def ledger_nonces(configmaps: list[Mapping[str, Any]]) -> frozenset[str]:
    """Used nonces from the ledger ConfigMaps (SPEC §9: one key per nonce)."""
    nonces: set[str] = set()
    for cm in configmaps:
        nonces.update((cm.get("data") or {}).keys())
    return frozenset(nonces)
