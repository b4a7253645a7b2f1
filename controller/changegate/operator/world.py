"""What the operator knows of the cluster: kopf indices, read through one small view.

Kopf lists every indexed resource before it calls any handler, and keeps the indices
current from its watches; after a restart they are rebuilt the same way. So the trust
store, the policy, the namespaces, the HPAs and the ledger are always the API's, never
a memory of the operator's own. The indices hold raw text and small dicts; parsing (the
trust store's keys above all) is memoized by content.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf

from changegate.core.approval import Problem, verify_approval
from changegate.core.errors import PolicyError, TrustStoreError
from changegate.core.policy import Policy, load_policy, namespace_settings
from changegate.core.senior import automation_users, declaration_problem, senior_problem
from changegate.core.snapshot import POLICY_KEY, TRUST_KEY, ProcessConfig
from changegate.core.trust import TrustStore, load_trust_store
from changegate.kube import GROUP, PLURAL, VERSION
from changegate.operator.ledger import PREFIX, LedgerEntry
from changegate.operator.status import Facts, read_statement

# Index ids: kopf passes each index to every handler as a keyword argument of this name.
CONFIG = "changegate_config"
LEDGER = "changegate_ledger"
NAMESPACES = "changegate_namespaces"
HPAS = "changegate_hpas"
APPROVALS = "changegate_approvals"


@functools.lru_cache(maxsize=8)
def _trust(text: str | None) -> tuple[TrustStore | None, str]:
    if text is None:
        return None, "trust store missing (ConfigMap key approvers.yaml)"
    try:
        return load_trust_store(text), ""
    except TrustStoreError as exc:
        return None, str(exc)


@functools.lru_cache(maxsize=8)
def _policy(text: str | None) -> tuple[Policy | None, str]:
    if text is None:
        return None, "policy missing (ConfigMap key policy.yaml)"
    try:
        return load_policy(text), ""
    except PolicyError as exc:
        return None, str(exc)


def mapping(value: Any) -> Mapping[str, Any]:
    """A sub-object of a raw body, or {} when absent or not an object."""
    return value if isinstance(value, dict) else {}


def _first(index: Any, key: Any) -> Any:
    store = index.get(key) if index is not None else None
    return next(iter(store), None) if store is not None else None


@dataclass(frozen=True)
class World:
    process: ProcessConfig
    indices: Mapping[str, Any]  # the handler's kwargs: kopf.Index objects by id

    @property
    def trust(self) -> tuple[TrustStore | None, str]:
        return _trust(_first(self.indices.get(CONFIG), "trust"))

    @property
    def policy(self) -> tuple[Policy | None, str]:
        return _policy(_first(self.indices.get(CONFIG), "policy"))

    def namespace(self, name: str) -> tuple[Mapping[str, str], Mapping[str, str]] | None:
        """(labels, annotations), or None for a namespace not (yet) seen."""
        found = _first(self.indices.get(NAMESPACES), name)
        return found if isinstance(found, tuple) else None

    def is_tier1(self, name: str) -> bool:
        policy, _ = self.policy
        if name == self.process.namespace or name == "kube-system":
            return False
        found = self.namespace(name)
        # An unseen namespace counts as tier-1: looking at its approvals costs a little,
        # missing an applied change would leave its nonce out of the ledger.
        return found is None or policy is None or policy.selects(dict(found[0]))

    def autoscaled(self, namespace: str, kind: str, name: str) -> bool:
        policy, _ = self.policy
        if kind != "Deployment":
            return False
        listed = policy is not None and policy.is_autoscaled(namespace, name)
        return listed or _first(self.indices.get(HPAS), (namespace, name)) is not None

    def ledger_entry(self, nonce: str) -> LedgerEntry | None:
        raw = _first(self.indices.get(LEDGER), nonce) if nonce else None
        return LedgerEntry.from_json(raw) if isinstance(raw, str) else None

    def all_approvals(self) -> list[tuple[str, dict[str, str]]]:
        """(namespace, entry) for every approval the index holds."""
        index = self.indices[APPROVALS]
        return [(key[0], entry) for key in list(index) for entry in list(index.get(key) or [])]

    def approvals_for(self, namespace: str, kind: str, name: str) -> list[dict[str, str]]:
        store = self.indices[APPROVALS].get((namespace, kind, name))
        return list(store) if store is not None else []

    def facts(self, body: Mapping[str, Any], now: datetime,
              ledger: LedgerEntry | None = None) -> Facts:
        """The inputs of status.assess() for one ChangeApproval; ``ledger`` overrides the
        index (just written, the index has not seen it yet)."""
        meta = mapping(body.get("metadata"))
        spec = mapping(body.get("spec"))
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        trust, trust_error = self.trust
        policy, policy_error = self.policy
        target = mapping(spec.get("target"))
        autoscaled = self.autoscaled(namespace, str(target.get("kind", "")),
                                     str(target.get("name", "")))
        verified = required = None
        eligible: frozenset[str] = frozenset()
        rules: tuple[Problem, ...] = ()
        if trust is not None and policy is not None:
            automation = automation_users(policy)
            verified = verify_approval(namespace, spec, trust,
                                       allow_service_accounts=policy.allowServiceAccountApprovers,
                                       automation=automation)
            found = self.namespace(namespace)
            required = namespace_settings(policy, dict(found[1]) if found else {}
                                          ).required_approvals
            eligible = frozenset(trust.eligible_approvers(
                namespace, allow_service_accounts=policy.allowServiceAccountApprovers,
                automation=automation))
            if verified.statement is not None:  # SPEC §6a, as far as the statement tells
                found_rules = (declaration_problem(policy, verified.statement),
                               senior_problem(policy, trust, verified.statement,
                                              verified.approvers))
                rules = tuple(q for q in found_rules if q is not None)
        status = mapping(body.get("status"))
        return Facts(namespace=namespace, name=name, uid=str(meta.get("uid", "")), spec=spec,
                     verified=verified, policy=policy,
                     config_error=trust_error or policy_error,
                     required=required or int(status.get("required") or 2),
                     eligible=eligible, autoscaled=autoscaled,
                     ledger=ledger or self.ledger_entry(_written_nonce(spec)),
                     now=now, previous_phase=str(status.get("phase") or ""),
                     policy_rules=rules)


def _written_nonce(spec: Mapping[str, Any]) -> str:
    st, _ = read_statement(spec, "")
    return st.predicate.nonce if st is not None else ""


def register(registry: kopf.OperatorRegistry, process: ProcessConfig) -> None:
    """The indices every handler reads (see the ids above)."""
    ns = process.namespace

    def is_config(namespace: str | None, name: str, **_: Any) -> bool:
        return namespace == ns and name in (process.trust_configmap, process.policy_configmap)

    @kopf.index("configmaps", id=CONFIG, when=is_config, registry=registry)
    def config(name: str, body: kopf.Body, **_: Any) -> dict[str, str | None]:
        data = body.get("data") or {}
        if name == process.trust_configmap:
            return {"trust": data.get(TRUST_KEY)}
        return {"policy": data.get(POLICY_KEY)}

    def is_ledger(namespace: str | None, name: str, **_: Any) -> bool:
        return namespace == ns and name.startswith(PREFIX)

    @kopf.index("configmaps", id=LEDGER, when=is_ledger, registry=registry)
    def ledger(body: kopf.Body, **_: Any) -> dict[str, str]:
        return dict(body.get("data") or {})

    @kopf.index("namespaces", id=NAMESPACES, registry=registry)
    def namespaces(name: str, labels: kopf.Labels, annotations: kopf.Annotations,
                   **_: Any) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        return {name: (dict(labels), dict(annotations))}

    @kopf.index("autoscaling", "horizontalpodautoscalers", id=HPAS, registry=registry)
    def hpas(namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], bool]:
        ref = spec.get("scaleTargetRef") or {}
        return {(str(namespace), str(ref.get("name"))): True} \
            if ref.get("kind") == "Deployment" else {}

    @kopf.index(GROUP, VERSION, PLURAL, id=APPROVALS, registry=registry)
    def approvals(name: str, namespace: str | None, uid: str, spec: kopf.Spec, status: kopf.Status,
                  **_: Any) -> dict[tuple[str, str, str], dict[str, str]]:
        target = spec.get("target") or {}
        return {(str(namespace), str(target.get("kind")), str(target.get("name"))): {
            "name": name, "uid": uid, "phase": str(status.get("phase") or ""),
            "operation": str(spec.get("operation")), "toDigest": str(spec.get("toDigest")),
            "targetUid": str(target.get("uid")), "since": _last_transition(status)}}

    def _last_transition(status: kopf.Status) -> str:
        """When the status last changed state (RFC 3339, comparable as text): the clock
        approvalRetention runs from once the phase is terminal."""
        times = [str(c.get("lastTransitionTime") or "") for c in status.get("conditions") or []
                 if isinstance(c, dict)]
        return max(times, default="")
