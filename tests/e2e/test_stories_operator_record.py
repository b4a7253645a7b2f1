"""Story 11: the operator's record (SPEC §7a), on the real control plane with serve and the
operator running as the chart installs them.

- dana's break-glass rollback owes a review: a ChangeApproval for exactly that change,
  its nonce already in the ledger, listed by `changegate list --owed`, explained by
  `changegate status`, signed by bob and carol with `changegate approve` -> Reviewed.
- With the ValidatingWebhookConfiguration deleted an unapproved change lands; the
  operator counts it, posts an Event on the object and owes a review for it.
- The operator killed between such a change and its resync reports it after restart.
- `changegate emergency-off` sets changegate_webhook_config_drift; `emergency-on` clears it;
  a change that lands while the webhook fails open is unexplained too.
- A real Prometheus with the chart's rules scrapes the operator: the review-overdue alert
  fires (the policy's reviewDeadline shortened) and clears once the review is signed; the
  unexplained-change alert fires; the drift alert's expression holds (pending: it waits
  5 minutes before it pages).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.alerts import monitoring_values, write_rules_file
from tests.chart.rendering import NAMESPACE as CONTROLLER
from tests.cluster import free_port

from .stories import POLICY_ADMINS, Gate, _http, deployment, wait_for, write_manifest

pytest_plugins = ["tests.e2e.stories"]

GLASS = "changegate.io/break-glass"
# Changes are seen from the watch at once; the operator's resync is 10 s.
WITHIN_RESYNC = 30.0


PROMETHEUS = shutil.which("prometheus")


class Prometheus:
    """Prometheus on loopback with exactly the shipped rules, scraping the operator (the
    job name the chart's ServiceMonitor gives it) every second."""

    def __init__(self, gate: Gate, work: Path) -> None:
        assert PROMETHEUS is not None
        rules = work / "rules.yaml"
        write_rules_file(rules, monitoring_values())
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "changegate-operator", "static_configs": [
                {"targets": [f"127.0.0.1:{gate.operator_port}"]}]}]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = work / "prometheus.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'tsdb'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdout=sink, stderr=subprocess.STDOUT)
        wait_for(lambda: _http(f"{self.url}/-/ready")[0] == 200, "prometheus ready", 60)

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        status, body = _http(f"{self.url}/api/v1/alerts")
        found = json.loads(body)["data"]["alerts"] if status == 200 else []
        return [a for a in found if a["labels"].get("alertname") == name
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def state(self, name: str, **labels: str) -> str:
        """firing, pending, or "" (inactive)."""
        states = {a["state"] for a in self.alerts(name, **labels)}
        return "firing" if "firing" in states else "pending" if "pending" in states else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def prometheus(gate: Gate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    running = Prometheus(gate, tmp_path_factory.mktemp("prometheus"))
    try:
        yield running
    finally:
        running.stop()


def set_review_deadline(gate: Gate, value: str) -> None:
    """As a policy admin (the config guard lets no one else change the policy) who is also
    a cluster admin (RBAC: the controller namespace's ConfigMaps)."""
    cm = gate.get("configmap", "changegate-policy", CONTROLLER)
    assert cm is not None
    policy = yaml.safe_load(cm["data"]["policy.yaml"]) or {}
    policy["reviewDeadline"] = value
    r = gate.kubectl("admin", "--as=pat", f"--as-group={POLICY_ADMINS}",
                     "--as-group=system:masters", "patch", "configmap",
                     "changegate-policy", "-n", CONTROLLER, "--type=merge", "-p",
                     json.dumps({"data": {"policy.yaml": yaml.safe_dump(policy)}}))
    assert r.rc == 0, r.text


def owed_reviews(gate: Gate, ns: str) -> list[dict[str, Any]]:
    r = gate.kubectl("admin", "get", "changeapprovals.changegate.io", "-n", ns, "-l",
                     "changegate.io/review", "-o", "json")
    assert r.rc == 0, r.err
    return [i for i in json.loads(r.out)["items"]
            if (i.get("status") or {}).get("phase") in ("ReviewOwed", "Reviewed")]


def one_review(gate: Gate, ns: str) -> dict[str, Any]:
    found = wait_for(lambda: owed_reviews(gate, ns), f"a review owed in {ns}",
                     timeout=WITHIN_RESYNC)
    assert len(found) == 1, found
    return found[0]


def events(gate: Gate, ns: str, name: str) -> list[dict[str, Any]]:
    r = gate.kubectl("admin", "get", "events", "-n", ns, "--field-selector",
                     f"involvedObject.name={name}", "-o", "json")
    return json.loads(r.out)["items"] if r.rc == 0 else []


def operator_metrics(gate: Gate) -> str:
    return _http(f"http://127.0.0.1:{gate.operator_port}/metrics")[1]


def metric(gate: Gate, name: str, **labels: str) -> float:
    """The sample's value, 0 when the series is absent."""
    for line in operator_metrics(gate).splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if labels else {}
        if got == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def in_ledger(gate: Gate, approval: dict[str, Any]) -> dict[str, Any] | None:
    import base64
    nonce = json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]
    shard = gate.get("configmap", f"changegate-ledger-{nonce[0]}", CONTROLLER) or {}
    raw = (shard.get("data") or {}).get(nonce)
    return json.loads(raw) if raw else None


@pytest.fixture
def short_review_deadline(gate: Gate) -> Iterator[None]:
    set_review_deadline(gate, "20s")
    try:
        yield
    finally:
        set_review_deadline(gate, "24h")


def test_dana_break_glass_rollback_owes_a_review_that_bob_and_carol_sign(
        gate: Gate, prometheus: Prometheus, short_review_deadline: None, tmp_path: Path):
    ns = gate.namespace("s10-glass", deployment("checkout", "1.41.0"))
    before = gate.live_digest("deployment", "checkout", ns)
    rollback = write_manifest(tmp_path / "rollback.yaml", deployment(
        "checkout", "1.40.3", annotations={GLASS: "INC-5521 rollback: 5xx at 40% by dana"}))
    r = gate.kubectl("dana", "apply", "-n", ns, "-f", str(rollback))
    assert r.rc == 0 and "BREAK-GLASS by dana" in r.err, r.text
    after = gate.live_digest("deployment", "checkout", ns)

    review = one_review(gate, ns)
    name = review["metadata"]["name"]
    review = wait_for(lambda: (a := gate.approval(ns, name))["status"].get("phase")
                      == "ReviewOwed" and a, "phase ReviewOwed", timeout=WITHIN_RESYNC)
    spec, status = review["spec"], review["status"]
    # Exactly dana's change: from/to digests of the live object, the reason, dana.
    assert (spec["operation"], spec["fromDigest"], spec["toDigest"]) == ("UPDATE", before, after)
    assert spec["requestedBy"] == "dana" and spec["changeRecord"]["id"] == "INC-5521"
    assert status["review"]["reason"] == "break-glass"
    assert status["review"]["detail"] == "INC-5521 rollback: 5xx at 40% by dana"
    # Its nonce is in the ledger already: it can never admit anything.
    assert in_ledger(gate, review) == {
        "approval": f"{ns}/{name}", "uid": "", "expiresAt": spec["expiresAt"],
        "target": f"k8s://apps/v1/namespaces/{ns}/deployments/checkout"}
    reasons = {e["reason"] for e in events(gate, ns, "checkout")}
    assert {"BreakGlass", "ReviewOwed"} <= reasons, reasons
    wait_for(lambda: metric(gate, "changegate_reviews_owed", state="pending") >= 1,
             "changegate_reviews_owed{state=pending}")

    # What is owed shows in list and status, for anyone who may read approvals.
    listed = gate.changegate("bob", "list", "--owed", "-n", ns)
    assert listed.rc == 0, listed.text
    assert name in listed.out and "ReviewOwed (break-glass)" in listed.out, listed.out
    shown = gate.changegate("bob", "status", name, "-n", ns)
    assert shown.rc == 0, shown.text
    assert "Review owed:   break-glass change" in shown.out
    assert "INC-5521 rollback: 5xx at 40% by dana" in shown.out
    assert "Owed: 2 more approver signature(s)" in shown.out

    # Unsigned past the (shortened) reviewDeadline: overdue, and the alert fires.
    wait_for(lambda: metric(gate, "changegate_reviews_owed", state="overdue") >= 1,
             "the review counted overdue", timeout=WITHIN_RESYNC)
    wait_for(lambda: prometheus.state("ChangeGateBreakGlassReviewOverdue") == "firing",
             "ChangeGateBreakGlassReviewOverdue firing in Prometheus", timeout=WITHIN_RESYNC)

    # bob and carol review it with `changegate approve`, as any approval.
    owed_before = metric(gate, "changegate_reviews_owed", state="pending") + \
        metric(gate, "changegate_reviews_owed", state="overdue")
    gate.approve("INC-5521", ns, "bob", "carol")
    reviewed = wait_for(lambda: (a := gate.approval(ns, name))["status"].get("phase")
                        == "Reviewed" and a, "phase Reviewed", timeout=WITHIN_RESYNC)
    assert reviewed["status"]["approvers"] == ["bob", "carol"]
    wait_for(lambda: metric(gate, "changegate_reviews_owed", state="pending")
             + metric(gate, "changegate_reviews_owed", state="overdue") < owed_before,
             "the review no longer owed")
    wait_for(lambda: prometheus.state("ChangeGateBreakGlassReviewOverdue") == "",
             "ChangeGateBreakGlassReviewOverdue resolved", timeout=WITHIN_RESYNC)
    assert "Reviewed" in {e["reason"] for e in events(gate, ns, name)}
    # Signed by two approvers, it still admits nothing: with the object back where dana
    # started (her second break-glass), alice's write of exactly the reviewed change
    # from -> to is refused, since the review's nonce is used.
    back = write_manifest(tmp_path / "back.yaml", deployment(
        "checkout", "1.41.0", annotations={GLASS: "INC-5522 roll forward again by dana"}))
    assert gate.kubectl("dana", "apply", "-n", ns, "-f", str(back)).rc == 0
    assert gate.live_digest("deployment", "checkout", ns) == before
    again = gate.kubectl("alice", "apply", "-n", ns, "-f", str(rollback))
    assert again.rc == 1, again.text
    assert "reason: approval_used" in again.err, again.err
    assert gate.live_digest("deployment", "checkout", ns) == before


def recorded(gate: Gate, ns: str) -> None:
    """Until the operator has recorded the namespace as it is (its baseline)."""
    from changegate.operator.record import namespace_key
    key = namespace_key(ns)

    def found() -> bool:
        shard = gate.get("configmap", f"changegate-record-{key[1]}", CONTROLLER) or {}
        return key in (shard.get("data") or {})
    wait_for(found, f"the operator's baseline of {ns}", timeout=WITHIN_RESYNC)


def _unexplained(gate: Gate, ns: str) -> float:
    return metric(gate, "changegate_unexplained_changes_total", kind="Deployment",
                  namespace=ns)


def _bypass(gate: Gate, ns: str, tmp_path: Path, image: str) -> str:
    """alice's unapproved change, applied while the webhook configuration is deleted."""
    gate.unregister()
    try:
        r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(write_manifest(
            tmp_path / f"{image}.yaml", deployment("checkout", image))))
        assert r.rc == 0, r.text  # nothing gates it: the webhook is not called
    finally:
        gate.register()
    return gate.live_digest("deployment", "checkout", ns)


def _assert_reported(gate: Gate, ns: str, before: str, after: str) -> None:
    wait_for(lambda: _unexplained(gate, ns) == 1, f"unexplained_changes_total for {ns}",
             timeout=WITHIN_RESYNC)
    event = wait_for(lambda: [e for e in events(gate, ns, "checkout")
                              if e["reason"] == "UnexplainedChange"],
                     "the UnexplainedChange Event", timeout=WITHIN_RESYNC)[0]
    assert event["involvedObject"]["kind"] == "Deployment"
    assert event["type"] == "Warning" and before in event["message"] and after in event["message"]
    review = one_review(gate, ns)
    review = wait_for(lambda: (a := gate.approval(ns, review["metadata"]["name"]))
                      ["status"].get("phase") == "ReviewOwed" and a, "ReviewOwed")
    assert review["status"]["review"]["reason"] == "unexplained"
    assert (review["spec"]["fromDigest"], review["spec"]["toDigest"]) == (before, after)
    assert in_ledger(gate, review) is not None


def test_with_the_webhook_deleted_an_unapproved_change_is_counted_told_and_owed(
        gate: Gate, prometheus: Prometheus, tmp_path: Path):
    ns = gate.namespace("s10-bypass", deployment("checkout", "1.41.0"))
    before = gate.live_digest("deployment", "checkout", ns)
    recorded(gate, ns)
    after = _bypass(gate, ns, tmp_path, "6.6.6")
    assert after != before
    _assert_reported(gate, ns, before, after)
    wait_for(lambda: prometheus.state("ChangeGateUnexplainedChange", namespace=ns,
                                      kind="Deployment") == "firing",
             "ChangeGateUnexplainedChange firing in Prometheus", timeout=WITHIN_RESYNC)


def test_the_operator_killed_before_it_saw_the_change_reports_it_after_restart(
        gate: Gate, tmp_path: Path):
    ns = gate.namespace("s10-restart", deployment("checkout", "1.41.0"))
    before = gate.live_digest("deployment", "checkout", ns)
    recorded(gate, ns)
    assert gate.operator is not None
    gate.operator.kill()  # no clean shutdown: nothing flushed at exit
    gate.operator.wait()
    try:
        after = _bypass(gate, ns, tmp_path, "6.6.7")
    finally:
        gate.start_operator()
    _assert_reported(gate, ns, before, after)


def test_emergency_off_is_drift_until_emergency_on_and_what_fails_open_is_unexplained(
        gate: Gate, prometheus: Prometheus, tmp_path: Path):
    drift = "changegate_webhook_config_drift"
    wait_for(lambda: f"{drift} 0.0" in operator_metrics(gate), "no drift to begin with")
    ns = gate.namespace("s10-failopen", deployment("checkout", "1.41.0"))
    before = gate.live_digest("deployment", "checkout", ns)
    recorded(gate, ns)
    off = gate.changegate("admin", "emergency-off", "--reason", "INC-77 webhook outage")
    assert off.rc == 0, off.text
    try:
        wait_for(lambda: metric(gate, drift) == 1, "drift after emergency-off",
                 timeout=WITHIN_RESYNC)
        # The drift alert's expression holds; it pages after its 5 minutes.
        wait_for(lambda: prometheus.state("ChangeGateWebhookConfigDrifted") == "pending",
                 "ChangeGateWebhookConfigDrifted pending in Prometheus", timeout=WITHIN_RESYNC)
        # The webhook down while failing open: alice's unapproved change lands...
        gate.stop_serve()
        try:
            r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(write_manifest(
                tmp_path / "open.yaml", deployment("checkout", "6.6.8"))))
            assert r.rc == 0, r.text
        finally:
            gate.start_serve()
    finally:
        on = gate.changegate("admin", "emergency-on")
        assert on.rc == 0, on.text
    # ...and the API server counted the fail-open (the metric ChangeGateWebhookFailingOpen
    # reads), and the operator reports the change like any other that nothing explains.
    apiserver = gate.kubectl("admin", "get", "--raw", "/metrics").out
    assert re.search(r'^apiserver_admission_webhook_fail_open_count\{[^}]*'
                     r'name="deployments.changegate.io"', apiserver, re.MULTILINE)
    assert "apiserver_admission_webhook_admission_duration_seconds_bucket{" in apiserver
    _assert_reported(gate, ns, before, gate.live_digest("deployment", "checkout", ns))
    wait_for(lambda: metric(gate, drift) == 0, "no drift after emergency-on",
             timeout=WITHIN_RESYNC)
    wait_for(lambda: prometheus.state("ChangeGateWebhookConfigDrifted") == "",
             "ChangeGateWebhookConfigDrifted resolved", timeout=WITHIN_RESYNC)
    # The configuration deleted is drift too.
    gate.unregister()
    try:
        wait_for(lambda: metric(gate, drift) == 1, "drift with the configuration deleted",
                 timeout=WITHIN_RESYNC)
    finally:
        gate.register()
    wait_for(lambda: metric(gate, drift) == 0, "no drift once it is back",
             timeout=WITHIN_RESYNC)


def test_a_warn_namespace_gets_would_deny_events_naming_each_writer(gate: Gate, tmp_path: Path):
    """Onboarding: warn admits, and each change deny would refuse leaves a WouldDeny Event
    with what changed, the digests and the writer as far as managedFields tell."""
    ns = gate.namespace("s10-warn", deployment("checkout", "1.41.0"),
                        annotations={"changegate.io/enforcement": "warn"})
    recorded(gate, ns)
    before = gate.live_digest("deployment", "checkout", ns)
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(write_manifest(
        tmp_path / "v2.yaml", deployment("checkout", "1.42.0"))))
    assert r.rc == 0 and "changegate" in r.err, r.text  # admitted, with warn's warnings
    after = gate.live_digest("deployment", "checkout", ns)
    r = gate.kubectl("dana", "patch", "deployment/checkout", "-n", ns, "--type=merge",
                     "-p", '{"spec": {"replicas": 1}}', "--field-manager=autoscaler-script")
    assert r.rc == 0, r.text
    scaled = gate.live_digest("deployment", "checkout", ns)
    found = wait_for(lambda: len(w := [e for e in events(gate, ns, "checkout")
                                       if e["reason"] == "WouldDeny"]) >= 2 and w,
                     "two WouldDeny Events", timeout=WITHIN_RESYNC)
    messages = "\n".join(sorted(e["message"] for e in found))
    assert any(f" -> {after}" in m and "kubectl-client-side-apply" in m
               for m in messages.splitlines()), f"{before} -> {after}:\n{messages}"
    assert any(f"{after} -> {scaled}" in m and "autoscaler-script" in m
               for m in messages.splitlines()), f"{after} -> {scaled}:\n{messages}"
    assert all(e["type"] == "Warning" for e in found)
    assert owed_reviews(gate, ns) == []

