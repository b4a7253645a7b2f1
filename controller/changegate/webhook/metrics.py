"""Every Prometheus instrument the webhook owns (SPEC §8), defined once, in one registry.

Label values are bounded on purpose: a username or an object name as a label would make
one time series per person or per object (and leak them to whoever reads /metrics).
`reason` takes only the reason codes of `ReasonCode` (docs/contracts.md), `kind` only the
kinds the webhook is registered for, `namespace` only a gated namespace the webhook
watched; anything else is counted as `other`. Any pod can post a review naming any
namespace or kind (SPEC §5), so no label value may come from a request body unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from changegate import __version__
from changegate.core.reasons import ReasonCode
from changegate.core.snapshot import Snapshot
from changegate.core.verdict import Decision

# No `*_created` series: they double what Prometheus scrapes and no rule here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
# CPU seconds, resident memory, open file descriptors and the start time of this process.
ProcessCollector(registry=REGISTRY)

REASONS = frozenset(ReasonCode)
KINDS = frozenset({"Deployment", "ConfigMap", "ChangeApproval", "Namespace", "Scale"})
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
SIGNATURE_RESULTS = frozenset({"valid", "invalid", "untrusted"})
CONFIGS = frozenset({"trust", "policy", "ledger"})
OTHER = "other"

# A decision from memory takes ~0.1 ms of Python and a TLS round trip; the interesting
# range is 0.5 ms (healthy) up to the 4-5 s deadline (the API server gives up).
DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 4.0, 5.0)

BUILD_INFO = Gauge(
    "changegate_build_info", "Always 1; the running changegate's version as a label.",
    ["version"], registry=REGISTRY)
BUILD_INFO.labels(__version__).set(1)
REQUESTS = Counter(
    "changegate_admission_requests", "AdmissionReviews answered, by decision and reason.",
    ["kind", "operation", "decision", "reason"], registry=REGISTRY)
DURATION = Histogram(
    "changegate_admission_duration_seconds", "Time from request to answer, in the webhook.",
    ["kind"], buckets=DURATION_BUCKETS, registry=REGISTRY)
REJECTED = Counter(
    "changegate_rejected_changes", "Changes denied by a rule (not by a webhook fault).",
    ["namespace", "kind", "reason"], registry=REGISTRY)
BREAK_GLASS = Counter(
    "changegate_break_glass", "Changes admitted by break-glass.", ["namespace"],
    registry=REGISTRY)
SIGNATURES = Counter(
    "changegate_signature_verifications",
    "Signatures judged while deciding (memoized results are counted again).", ["result"],
    registry=REGISTRY)
CACHE_SYNCED = Gauge(
    "changegate_cache_synced", "1 once every watch has listed (the replica is ready).",
    registry=REGISTRY)
TRUST_STORE_KEYS = Gauge(
    "changegate_trust_store_keys", "Keys in the loaded trust store (0 when it is invalid).",
    registry=REGISTRY)
POLICY_CHANGES = Counter(
    "changegate_policy_changes", "Tier-1 namespace loosenings seen by the namespace guard.",
    ["namespace", "allowed"], registry=REGISTRY)
CONFIG_CHANGES = Counter(
    "changegate_config_changes", "Changes to the trust store, policy or ledger ConfigMaps "
    "(allowed: admitted, or refused by the config guard).",
    ["config", "loosened", "allowed"], registry=REGISTRY)
EXEMPT_WRITES = Counter(
    "changegate_exempt_writes", "Writes admitted for an exemptWriters identity.",
    ["namespace", "kind"], registry=REGISTRY)
ELIGIBLE_APPROVERS = Gauge(
    "changegate_eligible_approvers", "Trust-store approvers who may approve in a tier-1 "
    "namespace.", ["namespace"], registry=REGISTRY)
CONFIG_VALID = Gauge(
    "changegate_config_valid", "1 when the trust store and the policy both validate.",
    registry=REGISTRY)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def reason_label(code: str) -> str:
    return _bounded(code, REASONS)


def kind_label(kind: str) -> str:
    return _bounded(kind, KINDS)


def namespace_label(namespace: str, snapshot: Snapshot) -> str:
    """The namespace as a label value only when watched state knows it as gated (tier-1;
    any namespace it knows while the policy is unreadable), else `other`."""
    info = snapshot.namespaces.get(namespace)
    if info is None:
        return OTHER
    policy = snapshot.policy
    return namespace if policy is None or policy.selects(dict(info.labels)) else OTHER


def observe_decision(decision: Decision, seconds: float, *, namespace: str,
                     snapshot: Snapshot) -> None:
    """Count one answered AdmissionReview. ``namespace`` is the request's (or, for the
    namespace guard, the Namespace's own name: it is the namespace the change is about).

    A dry-run changes nothing: it is counted as a request, never as break-glass, a policy
    or a config change (a `kubectl diff` must not page anyone)."""
    kind = kind_label(decision.kind)
    reason = reason_label(decision.code)
    REQUESTS.labels(kind, _bounded(decision.operation, OPERATIONS), decision.outcome,
                    reason).inc()
    DURATION.labels(kind).observe(seconds)
    denied = decision.outcome == "denied"  # "error" (the webhook's own fault) is no rejection
    real = not decision.dry_run
    if denied or (real and (decision.break_glass or decision.policy_change is not None
                            or decision.code == ReasonCode.EXEMPT_WRITER)):
        namespace = namespace_label(namespace, snapshot)  # only where a label needs it
    if denied:
        REJECTED.labels(namespace, kind, reason).inc()
    for result in decision.signature_results:
        SIGNATURES.labels(_bounded(result, SIGNATURE_RESULTS)).inc()
    if not real:
        return
    if decision.code == ReasonCode.EXEMPT_WRITER:
        EXEMPT_WRITES.labels(namespace, kind).inc()
    if decision.break_glass and decision.allowed:
        BREAK_GLASS.labels(namespace).inc()
    if decision.policy_change is not None:
        POLICY_CHANGES.labels(namespace, str(decision.allowed).lower()).inc()
    if decision.config_change is not None:
        config, loosened = decision.config_change
        CONFIG_CHANGES.labels(_bounded(config, CONFIGS), str(loosened).lower(),
                              str(decision.allowed).lower()).inc()


def observe_bad_request(seconds: float) -> None:
    """A body that is no AdmissionReview (HTTP 400/413): counted, kind and reason unknown."""
    REQUESTS.labels(OTHER, OTHER, "error", OTHER).inc()
    DURATION.labels(OTHER).observe(seconds)


_eligible_namespaces: set[str] = set()


def observe_snapshot(snapshot: Snapshot, *, synced: bool) -> None:
    """Gauges that follow the state: called on every snapshot swap (cheap: a few entries)."""
    CACHE_SYNCED.set(1 if synced else 0)
    TRUST_STORE_KEYS.set(len(snapshot.trust) if snapshot.trust is not None else 0)
    CONFIG_VALID.set(0 if snapshot.config_error else 1)
    seen: set[str] = set()
    if snapshot.trust is not None and snapshot.policy is not None:
        policy, trust = snapshot.policy, snapshot.trust
        for name in tier1_namespaces(snapshot):
            seen.add(name)
            ELIGIBLE_APPROVERS.labels(name).set(len(trust.eligible_approvers(
                name, allow_service_accounts=policy.allowServiceAccountApprovers,
                automation=frozenset(policy.automation.users))))
    for gone in _eligible_namespaces - seen:
        ELIGIBLE_APPROVERS.remove(gone)
    _eligible_namespaces.clear()
    _eligible_namespaces.update(seen)


def tier1_namespaces(snapshot: Snapshot) -> Iterable[str]:
    policy = snapshot.policy
    if policy is None:
        return ()
    return sorted(name for name, info in snapshot.namespaces.items()
                  if policy.selects(dict(info.labels)))


def exposition() -> bytes:
    return generate_latest(REGISTRY)
