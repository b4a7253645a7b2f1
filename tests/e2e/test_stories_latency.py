"""The latency changegate adds at the API server (bench/apiserver_latency.py, briefly), and
the one thing that made it large: a List of ChangeApprovals for every admitted write in a
namespace in warn mode.
"""

from __future__ import annotations

import re
import sys

from .stories import REPO, Gate, configmap

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

sys.path.insert(0, str(REPO / "bench"))
import apiserver_latency as bench  # noqa: E402

_NAMESPACED_LISTS = re.compile(
    r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)


def approval_lists(gate: Gate, namespace: str) -> int:
    """How many LISTs of ChangeApprovals in one namespace the API server has served (the
    webhook's read-through; its cache watches cluster-wide)."""
    text = gate.kubectl("admin", "get", "--raw", "/metrics").out
    total = 0.0
    for m in _NAMESPACED_LISTS.finditer(text):
        labels = m["labels"]
        if ('resource="changeapprovals"' in labels and 'verb="LIST"' in labels
                and 'scope="namespace"' in labels):
            total += float(m["value"])
    del namespace  # the metric has no namespace label: the test keeps others quiet
    return int(total)


def test_an_admitted_write_in_warn_mode_does_not_list_approvals(gate: Gate):
    """warn admits whatever the approvals say, so a second look at them (the read-through,
    a consistent LIST that kube-apiserver answers in ~100 ms) cannot change the answer."""
    ns = gate.namespace("s9-warn", configmap("settings", {"n": "0"}),
                        annotations={"changegate.io/enforcement": "warn"})
    before = approval_lists(gate, ns)
    for i in range(5):
        r = gate.kubectl("alice", "patch", "configmap", "settings", "-n", ns, "--type=merge",
                         "-p", f'{{"data": {{"n": "{i + 1}"}}}}')
        assert r.rc == 0, r.text
        assert "changegate: would DENY (warn): no_approval" in r.err
    assert approval_lists(gate, ns) - before <= 1


def test_the_latency_bench_runs_against_the_real_api_server(gate: Gate):
    results = bench.measure(gate.cluster, gate, sequential_n=20, writers=4, per_writer=5,
                            warmup=3)
    assert gate.registered, "the bench registers the webhook again when done"
    for path in ("no-change", "warn"):
        without = results[path]["none"]
        for mode in ("changegate", "allow-all"):
            # Every admitted write called the webhook of its mode (more than once when the
            # API server retried a PATCH that lost a race with the deployment controller's
            # status write), and nothing did once it was unregistered.
            with_hook = results[path][mode]
            assert with_hook["sequential"]["webhook_calls"] >= 20, mode
            assert with_hook["concurrent"]["webhook_calls"] >= 4 * 5, mode
            assert with_hook["sequential"]["n"] == 20, mode
            assert with_hook["sequential"]["webhook_mean_ms"] > 0, mode
        assert without["sequential"]["webhook_calls"] == 0
        assert without["concurrent"]["n"] == 20
    print("\n" + bench.table(results))
