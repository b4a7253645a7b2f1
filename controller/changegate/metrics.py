"""Every Prometheus instrument the webhook owns (SPEC §8), defined once, in one registry.

Label values are bounded on purpose: a username or an object name as a label would make
one time series per person or per object (and leak them to whoever reads /metrics).
`reason` takes only the reason codes of docs/contracts.md, `kind` only the kinds the
webhook is registered for; anything else is counted as `other`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from changegate.core.snapshot import Snapshot
from changegate.core.verdict import Decision

# No `*_created` series: they double what Prometheus scrapes and no rule here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

REASONS = frozenset({
    # deny: trust and signature
    "signature_invalid", "key_untrusted", "approver_wrong_namespace", "approver_duplicate",
    "self_approval", "applier_approval", "approval_used", "spec_statement_mismatch",
    "statement_invalid", "manifest_mismatch", "requester_mismatch", "approval_immutable",
    "trust_store_invalid",
    # deny: waiting or wrong change
    "no_approval", "approvals_insufficient", "expired", "not_yet_valid", "lifetime_exceeded",
    "target_mismatch", "operation_mismatch", "cluster_mismatch", "digest_mismatch",
    "change_record_invalid", "record_incomplete", "not_canonical", "image_not_pinned",
    "scale_down", "namespace_guard", "config_guard", "canary_required", "restart_unapproved",
    # deny: the webhook itself
    "config_invalid", "cache_not_ready", "internal_error", "deadline_exceeded",
    # allow
    "approved", "not_gated", "no_change", "break_glass", "exempt_writer", "restart",
    "warn_mode", "dry_run", "namespace_terminating", "scale_up", "config_change",
    "policy_change",
})
KINDS = frozenset({"Deployment", "ConfigMap", "ChangeApproval", "Namespace", "Scale"})
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
SIGNATURE_RESULTS = frozenset({"valid", "invalid", "untrusted"})
CONFIGS = frozenset({"trust", "policy", "ledger"})
OTHER = "other"

# A decision from memory takes ~0.1 ms of Python and a TLS round trip; the interesting
# range is 0.5 ms (healthy) up to the 4-5 s deadline (the API server gives up).
DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 4.0, 5.0)

ADMISSION_REQUESTS = Counter(
    "changegate_admission_requests", "AdmissionReviews answered, by decision and reason.",
    ["kind", "operation", "decision", "reason"], registry=REGISTRY)
ADMISSION_DURATION = Histogram(
    "changegate_admission_duration_seconds", "Time from request to answer, in the webhook.",
    ["kind"], buckets=DURATION_BUCKETS, registry=REGISTRY)
REJECTED_CHANGES = Counter(
    "changegate_rejected_changes", "Changes denied by a rule (not by a webhook fault).",
    ["namespace", "kind", "reason"], registry=REGISTRY)
BREAK_GLASS = Counter(
    "changegate_break_glass", "Changes admitted by break-glass.", ["namespace"],
    registry=REGISTRY)
SIGNATURE_VERIFICATIONS = Counter(
    "changegate_signature_verifications",
    "Signatures judged while deciding (memoized results are counted again).",
    ["result"], registry=REGISTRY)
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
    "changegate_config_changes", "Changes to the trust store, policy or ledger ConfigMaps.",
    ["config", "loosened"], registry=REGISTRY)
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


@functools.lru_cache(maxsize=4096)
def _request_series(kind: str, operation: str, outcome: str, reason: str) -> tuple[Any, Any]:
    """The two series every request touches, looked up once per label set: labels() costs
    ~3 us a call (validation, a lock), a dict hit a tenth of that. Label values are bounded,
    so the cache is too."""
    return (ADMISSION_REQUESTS.labels(kind, operation, outcome, reason),
            ADMISSION_DURATION.labels(kind))


@functools.lru_cache(maxsize=4096)
def _rejected_series(namespace: str, kind: str, reason: str) -> Any:
    return REJECTED_CHANGES.labels(namespace, kind, reason)


def observe_decision(decision: Decision, seconds: float, *, namespace: str) -> None:
    """Count one answered AdmissionReview. ``namespace`` is the request's (or, for the
    namespace guard, the Namespace's own name: it is the namespace the change is about)."""
    kind = kind_label(decision.kind)
    reason = reason_label(decision.code)
    requests, duration = _request_series(kind, _bounded(decision.operation, OPERATIONS),
                                         decision.outcome, reason)
    requests.inc()
    duration.observe(seconds)
    if decision.outcome == "denied":  # "error" (the webhook's own fault) is no rejection
        _rejected_series(namespace, kind, reason).inc()
    if decision.break_glass and decision.allowed:
        BREAK_GLASS.labels(namespace).inc()
    for result in decision.signature_results:
        SIGNATURE_VERIFICATIONS.labels(_bounded(result, SIGNATURE_RESULTS)).inc()
    if decision.policy_change is not None:
        POLICY_CHANGES.labels(namespace, str(decision.allowed).lower()).inc()
    if decision.config_change is not None:
        config, loosened = decision.config_change
        CONFIG_CHANGES.labels(_bounded(config, CONFIGS), str(loosened).lower()).inc()
    if decision.code == "exempt_writer":
        EXEMPT_WRITES.labels(namespace, kind).inc()


def observe_bad_request(seconds: float) -> None:
    """A body that is no AdmissionReview (HTTP 400/413): counted, kind and reason unknown."""
    ADMISSION_REQUESTS.labels(OTHER, OTHER, "error", OTHER).inc()
    ADMISSION_DURATION.labels(OTHER).observe(seconds)


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
                name, allow_service_accounts=policy.allowServiceAccountApprovers)))
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
