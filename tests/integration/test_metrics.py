"""/metrics: every SPEC §8 instrument the webhook owns, with bounded labels only."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

import changegate
from changegate.core.reasons import ReasonCode
from changegate.webhook import metrics
from tests.integration.conftest import fixture_names, write_state
from tests.integration.test_webhook_approval import BOB, CAROL, approval, trust
from tests.support import fixture

INSTRUMENTS = {
    "changegate_admission_requests": ("kind", "operation", "decision", "reason"),
    "changegate_admission_duration_seconds": ("kind",),
    "changegate_rejected_changes": ("namespace", "kind", "reason"),
    "changegate_break_glass": ("namespace",),
    "changegate_signature_verifications": ("result",),
    "changegate_cache_synced": (),
    "changegate_trust_store_keys": (),
    "changegate_policy_changes": ("namespace", "allowed"),
    "changegate_config_changes": ("config", "loosened", "allowed"),
    "changegate_exempt_writes": ("namespace", "kind"),
    "changegate_eligible_approvers": ("namespace",),
}


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_every_instrument_is_defined_once_with_its_labels():
    from prometheus_client.metrics import MetricWrapperBase

    defined = [(v._name, tuple(v._labelnames)) for v in vars(metrics).values()
               if isinstance(v, MetricWrapperBase)]
    names = [name for name, _ in defined]
    assert len(names) == len(set(names))
    for name, labels in INSTRUMENTS.items():
        assert dict(defined).get(name) == labels, name
    assert metrics.DURATION_BUCKETS[0] == 0.0005 and metrics.DURATION_BUCKETS[-1] == 5.0


def test_the_reason_label_takes_exactly_the_reason_codes():
    assert {code.value for code in ReasonCode} == metrics.REASONS


def test_unknown_reasons_and_kinds_are_counted_as_other():
    assert metrics.reason_label("made_up_code") == "other"
    assert metrics.reason_label("no_approval") == "no_approval"
    assert metrics.kind_label("Secret") == "other"


async def test_metrics_after_real_traffic_have_the_expected_labels_and_no_names(
        tmp_path, start_server, client):
    review = fixture("deployment-update")
    state = write_state(tmp_path / "s", approval(review, BOB, CAROL), trust=trust())
    server = start_server("--static", str(state))
    for name in fixture_names():
        async with client.post(server.url, json=fixture(name)) as response:
            assert response.status == 200
    async with client.post(server.url, data=b"not json") as response:
        assert response.status == 400
    exempt = fixture("configmap-create")
    exempt["request"]["name"] = exempt["request"]["object"]["metadata"]["name"] = \
        "kube-root-ca.crt"
    exempt["request"]["userInfo"] = {"username": "system:kube-controller-manager", "groups": []}
    async with client.post(server.url, json=exempt) as response:
        assert (await response.json())["response"]["allowed"] is True
    status, text = server.get("/metrics")
    assert status == 200
    found = families(text)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in found.values() for s in family}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    # The approval names the change, not who applies it: the update, its dry-run and the
    # same change applied by GitOps all pass.
    assert value("changegate_admission_requests_total", kind="Deployment", operation="UPDATE",
                 decision="allowed", reason="approved") == 3
    assert value("changegate_admission_requests_total", kind="Deployment", operation="UPDATE",
                 decision="denied", reason="digest_mismatch") == 2  # replicas, rollback
    # A restart is explained by the restart path, not by the approval of another change.
    assert value("changegate_admission_requests_total", kind="Deployment", operation="UPDATE",
                 decision="denied", reason="restart_unapproved") == 1
    assert value("changegate_admission_requests_total", kind="other", operation="other",
                 decision="error", reason="other") == 1  # the 400
    assert value("changegate_rejected_changes_total", namespace="payments", kind="ConfigMap",
                 reason="no_approval") == 3
    assert value("changegate_signature_verifications_total", result="valid") >= 2
    assert value("changegate_exempt_writes_total", namespace="payments", kind="ConfigMap") == 1
    assert value("changegate_cache_synced") == 1
    assert value("changegate_build_info", version=changegate.__version__) == 1
    assert value("process_cpu_seconds_total") > 0  # ProcessCollector: the server's own CPU
    assert value("process_resident_memory_bytes") > 0
    assert value("changegate_trust_store_keys") == 2
    assert value("changegate_eligible_approvers", namespace="payments") == 2
    assert value("changegate_admission_duration_seconds_count", kind="Deployment") >= 9
    buckets = [s.labels["le"] for s in found["changegate_admission_duration_seconds"]
               if s.name.endswith("_bucket") and s.labels["kind"] == "Deployment"]
    assert [float(b) for b in buckets] == [*metrics.DURATION_BUCKETS, float("inf")]
    # Bounded labels: no user or object names anywhere in the exposition.
    for needle in ("alice", "dana", "argocd", "checkout", "kube-root-ca", "chg-77", "CHG-77"):
        assert needle not in text, needle
    reasons = {s.labels["reason"] for s in found["changegate_admission_requests"]
               if "reason" in s.labels}
    assert reasons <= metrics.REASONS | {"other"}
    assert all(re.fullmatch(r"[a-z_]+", r) for r in reasons)
