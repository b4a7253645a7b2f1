"""Shared set-up for the e2e stories of issue 10 (tests/e2e/test_stories_*.py).

One `changegate serve` process (and one `changegate operator`) for every story, against the
session's real kube-apiserver, installed the way the chart installs it:
- the chart is rendered (helm-python-sdk, tests/chart/rendering.py) with
  `webhook.externalURL=https://127.0.0.1:PORT` and `webhook.caBundle` = the cluster CA;
- its CRD, ConfigMaps (trust store from `changegate keygen` keys of bob and carol, policy,
  changegate-info, changegate-config) and RBAC go in first, then serve runs as the chart's
  `changegate-webhook` service account and the operator as `changegate-operator` (tokens,
  holding exactly the chart's RBAC), and last the chart's ValidatingWebhookConfiguration;
- serve's serving certificate is `cluster.webhook_cert` (cluster CA, IP SAN 127.0.0.1).

Each story works in its own namespace. The webhook configuration is removed again after
the last story (`stories_teardown`), so later test modules are not gated by it.

The story modules load this file as a plugin (`pytest_plugins`), so `gate` is one
session fixture for all of them (a fixture imported into several modules would be one per
module). A plugin imported by the modules first cannot have its asserts rewritten:
PYTEST_DONT_REWRITE (the asserts here carry their own messages).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import NAMESPACE as CONTROLLER
from tests.chart.rendering import ci_values, merged, objects, one
from tests.cluster import (
    GITOPS_USER,
    free_port,
    probe_configmap,
    register_webhook,
    unregister_webhook,
    webhook_calls,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_NAME = "e2e-stories"
POLICY_ADMINS = "platform-admins"
BREAK_GLASS_GROUP = "sre-oncall"  # dana's group (tests/cluster USERS)
APPROVERS = ("bob", "carol")
# SPEC §6a: dana (on call) is also a senior approver; the GitOps controller is automation.
SENIORS = ("dana",)
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
REQUESTERS = ("alice",)  # `role: requester` keys: they sign requests, never approve
WEBHOOK_SA, OPERATOR_SA = "changegate-webhook", "changegate-operator"
# The last line of every denial (SPEC §5).
MACHINE_LINE = re.compile(
    r"^changegate: op=(?P<op>CREATE|UPDATE|DELETE) from=(?P<from>none|sha256:[0-9a-f]{64}) "
    r"to=(?P<to>none|sha256:[0-9a-f]{64}) approvals=(?P<approvals>\d+/\d+) "
    r"record=(?P<record>\S+)$")
SUFFIX = uuid.uuid4().hex[:5]


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def machine_line(self) -> re.Match[str]:
        """The machine-readable line of a denial; it must be the message's last line."""
        last = self.err.rstrip("\n").splitlines()[-1] if self.err.strip() else ""
        found = MACHINE_LINE.match(last)
        assert found, f"the last line of stderr is not the machine-readable line:\n{self.err}"
        return found


def deployment(name: str, image: str, *, replicas: int = 2, annotations: dict[str, str] | None
               = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment as a team writes it (no namespace: kubectl -n places it)."""
    meta: dict[str, Any] = {"name": name, "labels": {"app": name, **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{
                                      "name": name, "image": f"registry.example/{name}:{image}",
                                      "resources": {"requests": {"cpu": "50m"}}}]}}}}


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None
              ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
            "data": data}


def write_manifest(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30.0,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _http(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


class Gate:
    """changegate installed on the session's cluster: serve + operator + the chart's VWC."""

    def __init__(self, cluster: Any, *, operator: bool = True) -> None:
        self.cluster = cluster
        self.with_operator = operator
        self.work = Path(tempfile.mkdtemp(prefix="changegate-stories-"))
        self.port, self.metrics_port = free_port(), free_port()
        self.operator_port = free_port()
        self.serve_log = self.work / "serve.log"
        self.operator_log = self.work / "operator.log"
        self.serve: subprocess.Popen[bytes] | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, Path] = {}
        self.namespaces: list[str] = []
        self.registered = False
        self.probe_ns = f"stories-probe-{SUFFIX}"

    # -- install --------------------------------------------------------------------------
    def values(self, approvers: list[dict[str, Any]]) -> dict[str, Any]:
        return merged(ci_values()["default-values.yaml"], {
            "policy": {"clusterName": CLUSTER_NAME, "policyAdminGroups": [POLICY_ADMINS],
                       "breakGlassGroups": [BREAK_GLASS_GROUP],
                       "automation": {"users": [GITOPS_USER]},
                       # The GitOps controller also creates ChangeApprovals from files in
                       # Git, which carry their requester's signature (SPEC §4).
                       "trustedCreators": [GITOPS_USER]},
            "trustStore": {"approvers": approvers},
            "webhook": {"externalURL": f"https://127.0.0.1:{self.port}",
                        "caBundle": base64.b64encode(self.cluster.ca.pair.cert_pem()).decode()},
        })

    def keygen(self) -> list[dict[str, Any]]:
        """Each approver makes a key with `changegate keygen` and hands in the entry it
        prints; the trust store is those entries."""
        entries = []
        for name in (*APPROVERS, *SENIORS, *REQUESTERS):
            path = self.work / f"{name}.key"
            proc = subprocess.run(
                [sys.executable, "-m", "changegate", "keygen", "--name", name, "--out",
                 str(path)], capture_output=True, text=True, timeout=60, check=True)
            printed = yaml.safe_load(proc.stdout)["approvers"]
            for entry in printed:
                entry["senior"] = name in SENIORS  # what the administrator adds by hand
                if name in REQUESTERS:
                    entry["role"] = "requester"
            entries.extend(printed)
            self.keys[name] = path
        return entries

    def install(self) -> None:
        c = self.cluster
        self.objects = objects(self.values(self.keygen()))
        self.vwc = one(self.objects, "ValidatingWebhookConfiguration")
        c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER}})
        c.apply(one(self.objects, "CustomResourceDefinition"))
        c.kubectl("admin", "wait", "--for=condition=Established", "--timeout=60s",
                  "crd/changeapprovals.changegate.io", check=True)
        skip = {"CustomResourceDefinition", "ValidatingWebhookConfiguration", "Deployment",
                "Service", "Job", "PodDisruptionBudget"}
        # The harness's own changegate-tier1-editor (tests/cluster/rbac.yaml) stays.
        c.apply(*[o for o in self.objects if o["kind"] not in skip
                  and o["metadata"]["name"] != "changegate-tier1-editor"])
        # The webhook's ServiceAccount and bindings came with them: the chart renders them
        # with externalURL too, so this out-of-cluster serve watches as that account.
        assert one(self.objects, "ServiceAccount", WEBHOOK_SA)
        c.apply(*self._story_rbac())
        self.config_file = self.work / "config.yaml"
        config = one(self.objects, "ConfigMap", "changegate-config")["data"]
        self.config_file.write_text(config["config.yaml"])
        # The chart's rendering of the webhook entries, as the operator's pod mounts it.
        self.webhooks_file = self.work / "webhooks.yaml"
        self.webhooks_file.write_text(config["webhooks.yaml"])
        self.webhook_kubeconfig = self._token_kubeconfig(WEBHOOK_SA)
        self.operator_kubeconfig = self._token_kubeconfig(OPERATOR_SA)
        self.start_serve()
        c.create_namespace(self.probe_ns, {"tier": "tier-1"})
        register_webhook(c, self.vwc, probe=probe_configmap(self.probe_ns),
                         webhook="configmaps.changegate.io")
        self.registered = True
        if self.with_operator:
            self.start_operator()

    def register(self) -> None:
        """(Again) register the chart's webhook configuration; returns once it is called."""
        register_webhook(self.cluster, self.vwc, probe=probe_configmap(self.probe_ns),
                         webhook="configmaps.changegate.io")
        self.registered = True

    def unregister(self) -> None:
        """Remove it; returns once the API server no longer calls it."""
        unregister_webhook(self.cluster, self.vwc, probe=probe_configmap(self.probe_ns),
                           webhook="configmaps.changegate.io")
        self.registered = False

    def _story_rbac(self) -> list[dict[str, Any]]:
        """dana (on call) may edit namespaces, as may the policy admins: so the namespace
        guard, not RBAC, is what refuses dana. Policy admins also edit changegate's config."""
        rules = [{"apiGroups": [""], "resources": ["namespaces"],
                  "verbs": ["get", "list", "watch", "patch", "update"]}]
        return [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "stories-namespace-editor"}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "stories-namespace-editor"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "stories-namespace-editor"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": "dana"},
                          {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                           "name": POLICY_ADMINS}]},
            # The senior approver reads the trust store (public keys and names), so
            # `changegate approve` can tell them theirs is the signature a change waits for.
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "stories-trust-reader", "namespace": CONTROLLER},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                        "resourceNames": ["changegate-trust"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "stories-trust-reader", "namespace": CONTROLLER},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "stories-trust-reader"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": name} for name in SENIORS]},
        ]

    def _token_kubeconfig(self, sa: str) -> Path:
        raw = self.cluster.kubectl("admin", "config", "view", "--raw", "--minify", "--flatten",
                                   "-o", "json", check=True).stdout
        server = json.loads(raw)["clusters"][0]["cluster"]
        token = self.cluster.kubectl("admin", "create", "token", sa, "-n", CONTROLLER,
                                     "--duration=2h", check=True).stdout.strip()
        path = self.work / f"{sa}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": server}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": "e2e", "user": sa}}],
            "current-context": sa}))
        path.chmod(0o600)
        return path

    # -- processes ------------------------------------------------------------------------
    def start_serve(self) -> None:
        cert = self.cluster.webhook_cert
        argv = [sys.executable, "-m", "changegate", "serve",
                "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                "--address", "127.0.0.1", "--port", str(self.port),
                "--metrics-port", str(self.metrics_port),
                "--config", str(self.config_file), "--kubeconfig", str(self.webhook_kubeconfig),
                "--namespace", CONTROLLER, "--policy-admin-groups", POLICY_ADMINS,
                "--break-glass-groups", BREAK_GLASS_GROUP]
        with self.serve_log.open("ab") as sink:
            self.serve = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                          stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        wait_for(lambda: self.serve.poll() is not None or self.readyz()[0] == 200,
                 "changegate serve /readyz", timeout=60)
        assert self.serve.poll() is None, self.tail(self.serve_log)
        _status, text = self.readyz()
        assert text.startswith("ready") and "invalid" not in text, text

    def readyz(self) -> tuple[int, str]:
        return _http(f"http://127.0.0.1:{self.metrics_port}/readyz")

    def stop_serve(self) -> None:
        self._stop(self.serve)
        self.serve = None

    def start_operator(self) -> None:
        argv = [sys.executable, "-m", "changegate", "operator",
                "--kubeconfig", str(self.operator_kubeconfig), "--config", str(self.config_file),
                "--expected-webhooks", str(self.webhooks_file),
                "--namespace", CONTROLLER, "--standalone", "--metrics-host", "127.0.0.1",
                "--metrics-port", str(self.operator_port)]
        with self.operator_log.open("ab") as sink:
            self.operator = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=_die_with_parent)
        op = self.operator
        wait_for(lambda: op.poll() is not None
                 or _http(f"http://127.0.0.1:{self.operator_port}/healthz")[0] == 200,
                 "changegate operator /healthz", timeout=60)
        assert op.poll() is None, self.tail(self.operator_log)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        atexit.unregister(self.close)
        try:
            if self.registered and self.serve is not None and self.serve.poll() is None:
                self.unregister()
            elif self.registered:
                self.cluster.kubectl("admin", "delete", "validatingwebhookconfiguration",
                                     self.vwc["metadata"]["name"], "--ignore-not-found")
            self.registered = False
        finally:
            self._stop(self.operator)
            self.stop_serve()
            for ns in [*self.namespaces, self.probe_ns]:
                self.cluster.kubectl("admin", "delete", "namespace", ns, "--wait=false",
                                     "--ignore-not-found")
            # Logs, tokens and the approvers' private keys: kept only when asked for.
            if os.environ.get("CHANGEGATE_KEEP_STORIES"):
                print(f"changegate stories: logs in {self.work}", file=sys.stderr)
            else:
                shutil.rmtree(self.work, ignore_errors=True)

    @staticmethod
    def tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- what the stories use -------------------------------------------------------------
    def kubectl(self, user: str, *args: str, input: str | None = None,
                timeout: float = 60) -> Result:
        proc = self.cluster.kubectl(user, *args, input=input, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def changegate(self, user: str, *args: str, timeout: float = 120,
                   input: str | None = None) -> Result:
        """The CLI as `user`, with that user's own kubeconfig (client certificate)."""
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",
                                                                 "CHANGEGATE_KEY")}
        env["NO_COLOR"] = "1"
        # The CLI runs kubectl for client-side apply: the one built with this control plane.
        env["PATH"] = f"{Path(self.cluster.kubectl_bin).parent}{os.pathsep}{env['PATH']}"
        proc = subprocess.run(
            [sys.executable, "-m", "changegate", *args,
             "--kubeconfig", str(self.cluster.kubeconfigs[user])],
            capture_output=True, text=True, timeout=timeout, check=False, env=env, input=input)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def approve(self, record: str, namespace: str, *approvers: str) -> None:
        for who in approvers or APPROVERS:
            r = self.changegate(who, "approve", "--record", record, "-n", namespace,
                                "--key", str(self.keys[who]), "--yes")
            assert r.rc == 0, f"{who} could not approve {record}:\n{r.text}"

    def get(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        r = self.kubectl("admin", *args)
        if r.rc != 0:
            assert "NotFound" in r.err, r.err
            return None
        return json.loads(r.out)

    def approval(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.get("changeapprovals.changegate.io", name, namespace)
        assert found is not None, f"no ChangeApproval {namespace}/{name}"
        return found

    def decisions(self, **match: Any) -> list[dict[str, Any]]:
        """The webhook's JSON decision log (one audit record per admission), filtered."""
        out = []
        for line in self.serve_log.read_text(errors="replace").splitlines():
            if '"changegate.audit"' not in line:
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if all(doc.get(k) == v for k, v in match.items()):
                    out.append(doc)
        return out

    def decision(self, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The last matching decision. serve writes each record before it answers, so it is
        there when the write returns; the wait covers writes the test did not make itself
        (a controller's, a retry)."""
        found = wait_for(lambda: self.decisions(**match), f"a decision {match}",
                         timeout=timeout, interval=0.1)
        return found[-1]

    def calls(self, entry: str) -> int:
        return webhook_calls(self.cluster, entry)

    def namespace(self, story: str, *objs: dict[str, Any], tier1: bool = True,
                  annotations: dict[str, str] | None = None, user: str = "alice",
                  server_side: bool = False) -> str:
        """A story's namespace: the team's objects applied by `user` (client-side apply,
        so they carry last-applied like a team's; or server-side apply), then the namespace
        is onboarded as tier-1 and returns once changegate gates it."""
        name = f"{story}-{SUFFIX}"
        self.namespaces.append(name)
        self.cluster.create_namespace(name, {})
        if objs:
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
            mode = ("--server-side",) if server_side else ()
            r = self.kubectl(user, "apply", *mode, "-n", name, "-f", "-", input=body)
            assert r.rc == 0, r.err
        if tier1 or annotations:
            patch = {"metadata": {"labels": {"tier": "tier-1"} if tier1 else {},
                                  "annotations": annotations or {}}}
            r = self.kubectl("admin", "patch", "namespace", name, "--type=merge", "-p",
                             json.dumps(patch))
            assert r.rc == 0, r.err
        if tier1:
            self.wait_gated(name)
        return name

    def wait_gated(self, namespace: str) -> None:
        """Until a dry-run create there is judged by changegate (the API server's namespace
        informer and the webhook's cache both know the label)."""
        probe = json.dumps(probe_configmap(namespace, "stories-gate-probe"))

        def gated() -> bool:
            r = self.kubectl("alice", "create", "--dry-run=server", "-f", "-", input=probe)
            return "changegate: would DENY" in r.err

        wait_for(gated, f"changegate to gate namespace {namespace}", timeout=30)

    def live_digest(self, kind: str, name: str, namespace: str) -> str:
        from changegate.core.digest import digest
        obj = self.get(kind, name, namespace)
        assert obj is not None
        return digest(obj)


_GATE: Gate | None = None


def gate_for(cluster: Any) -> Gate:
    global _GATE
    if _GATE is None:
        if not getattr(cluster, "local", False):
            pytest.skip("the stories run changegate serve on 127.0.0.1: they need the local "
                        "control plane (tests/cluster), not KUBECONFIG")
        gate = Gate(cluster)
        atexit.register(gate.close)
        try:
            gate.install()
        except BaseException:
            gate.close()
            raise
        _GATE = gate
    return _GATE


def close_gate() -> None:
    global _GATE
    if _GATE is not None:
        gate, _GATE = _GATE, None
        gate.close()


def _is_story(item: pytest.Item) -> bool:
    return item.path.name.startswith("test_stories_")


@pytest.fixture(scope="session")
def gate(cluster) -> Iterator[Gate]:
    """The one Gate. Its teardown is the safety net: with -x or a failed story the webhook is
    still removed before the session's cluster stops."""
    yield gate_for(cluster)
    close_gate()


@pytest.fixture(autouse=True)
def stories_teardown(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the last story of the session, unregister the webhook and stop serve, so no
    later test module is gated by changegate. (A plugin's autouse fixture runs for every
    test; it does nothing while no Gate is up.)"""
    yield
    if _GATE is None:
        return
    items = request.session.items
    item = request.node
    with contextlib.suppress(ValueError):
        index = items.index(item)
        if index + 1 < len(items) and _is_story(items[index + 1]):
            return
    close_gate()
