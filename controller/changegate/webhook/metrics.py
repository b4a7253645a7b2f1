"""Every Prometheus instrument the webhook owns (SPEC §8), defined once, in one registry.

Label values are bounded on purpose: a username or an object name as a label would make
one time series per person or per object (and leak them to whoever reads /metrics).
`reason` takes only the reason codes of docs/contracts.md, `kind` only the kinds the
webhook is registered for, `namespace` only a gated namespace the webhook watched;
anything else is counted as `other`. Any pod can post a review naming any namespace or
kind (SPEC §5), so no label value may come from a request body unchecked.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

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
    "senior_approval_required", "automation_approver",
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

class HotSeries:
    """The series every admission touches, kept as plain numbers in dicts and handed to
    prometheus_client only when scraped. A labelled prometheus_client child costs a lock
    and a Python call per update: ~4 us of every request for these five series, a
    twentieth of the webhook's own time. Only the event loop's thread updates or reads
    these (admissions and /metrics are served by the same loop)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[str, list[float]] = {}  # kind -> per-bucket counts + [sum]
        self.rejected: dict[tuple[str, str, str], int] = {}
        self.break_glass: dict[str, int] = {}
        self.signatures: dict[str, int] = {}

    def observe_duration(self, kind: str, seconds: float) -> None:
        counts = self.durations.get(kind)
        if counts is None:
            counts = self.durations[kind] = [0.0] * (len(DURATION_BUCKETS) + 2)
        counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # le: bound included
        counts[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "changegate_admission_requests",
            "AdmissionReviews answered, by decision and reason.",
            labels=["kind", "operation", "decision", "reason"])
        for labels, value in self.requests.items():
            requests.add_metric(labels, value)
        duration = HistogramMetricFamily(
            "changegate_admission_duration_seconds",
            "Time from request to answer, in the webhook.", labels=["kind"])
        for kind, counts in self.durations.items():
            cumulative = itertools.accumulate(counts[:-1])
            duration.add_metric([kind], list(zip(_BUCKET_NAMES, cumulative, strict=True)),
                                counts[-1])
        rejected = CounterMetricFamily(
            "changegate_rejected_changes",
            "Changes denied by a rule (not by a webhook fault).",
            labels=["namespace", "kind", "reason"])
        for labels3, value in self.rejected.items():
            rejected.add_metric(labels3, value)
        break_glass = CounterMetricFamily(
            "changegate_break_glass", "Changes admitted by break-glass.", labels=["namespace"])
        for namespace, value in self.break_glass.items():
            break_glass.add_metric([namespace], value)
        signatures = CounterMetricFamily(
            "changegate_signature_verifications",
            "Signatures judged while deciding (memoized results are counted again).",
            labels=["result"])
        for result, value in self.signatures.items():
            signatures.add_metric([result], value)
        return [requests, duration, rejected, break_glass, signatures]

    def describe(self) -> Iterable[Metric]:
        return self.collect()


_BUCKET_NAMES = [floatToGoString(b) for b in (*DURATION_BUCKETS, math.inf)]  # type: ignore[no-untyped-call]
HOT = HotSeries()
REGISTRY.register(HOT)
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
    hot = HOT
    kind = kind_label(decision.kind)
    reason = reason_label(decision.code)
    key = (kind, _bounded(decision.operation, OPERATIONS), decision.outcome, reason)
    hot.requests[key] = hot.requests.get(key, 0) + 1
    hot.observe_duration(kind, seconds)
    denied = decision.outcome == "denied"  # "error" (the webhook's own fault) is no rejection
    real = not decision.dry_run
    if denied or (real and (decision.break_glass or decision.policy_change is not None
                            or decision.code == "exempt_writer")):
        namespace = namespace_label(namespace, snapshot)  # only where a label needs it
    if denied:
        rejected = (namespace, kind, reason)
        hot.rejected[rejected] = hot.rejected.get(rejected, 0) + 1
    for result in decision.signature_results:
        result = _bounded(result, SIGNATURE_RESULTS)
        hot.signatures[result] = hot.signatures.get(result, 0) + 1
    if not real:
        return
    if decision.code == "exempt_writer":
        EXEMPT_WRITES.labels(namespace, kind).inc()
    if decision.break_glass and decision.allowed:
        hot.break_glass[namespace] = hot.break_glass.get(namespace, 0) + 1
    if decision.policy_change is not None:
        POLICY_CHANGES.labels(namespace, str(decision.allowed).lower()).inc()
    if decision.config_change is not None:
        config, loosened = decision.config_change
        CONFIG_CHANGES.labels(_bounded(config, CONFIGS), str(loosened).lower(),
                              str(decision.allowed).lower()).inc()


def observe_bad_request(seconds: float) -> None:
    """A body that is no AdmissionReview (HTTP 400/413): counted, kind and reason unknown."""
    key = (OTHER, OTHER, "error", OTHER)
    HOT.requests[key] = HOT.requests.get(key, 0) + 1
    HOT.observe_duration(OTHER, seconds)


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
