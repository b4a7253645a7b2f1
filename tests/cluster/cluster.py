"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager,
+ fake nodes: kube-scheduler and kwok) on 127.0.0.1, built from pinned Go modules by build.sh.
envtest's approach, in Python; Helm v4 from the same build.

Two flavours share one interface (`kubectl(user, ...)`, `apply`, `create_namespace`):
- `Cluster`: starts its own processes, makes its own CA, one client certificate per user and a
  pod-bound token for the GitOps service account, so the API server authenticates every user
  for real (userInfo.extra carries the credential id, exactly as in production).
- `ExternalCluster`: an existing cluster from KUBECONFIG, admin only; users are impersonated
  (`--as/--as-group`), which yields the same username/groups but no `extra`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from .certs import CertificateAuthority, KeyPair, service_account_keys

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

# The story cast (client certificate: CN = user, O = groups). admin bypasses RBAC.
USERS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "alice": ("dev-team",),
    "bob": (),
    "carol": ("approvers",),
    "dana": ("sre-oncall",),
}
EDITORS = ("alice", "bob", "carol", "dana")
# The GitOps identity, as Argo CD's application controller appears to the API server.
GITOPS = "gitops"
GITOPS_NAMESPACE = "argocd"
GITOPS_SERVICE_ACCOUNT = "argocd-application-controller"
GITOPS_POD = "argocd-application-controller-0"
GITOPS_NODE = "e2e-node-0"
GITOPS_USER = f"system:serviceaccount:{GITOPS_NAMESPACE}:{GITOPS_SERVICE_ACCOUNT}"
EDITOR_ROLE = "changegate-tier1-editor"

READY_TIMEOUT = 120.0  # small CI runners need far more than envtest's 20 s default
# Enough for Deployments to get ReplicaSets (and Pending Pods), namespaces to delete, and the
# per-namespace ConfigMap kube-root-ca.crt that every real cluster writes (a gated kind the
# webhook must let its publisher write: SPEC §5 exemptWriters).
KCM_CONTROLLERS = (
    "deployment-controller,replicaset-controller,serviceaccount-controller,"
    "namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller"
)
# Fake nodes: kwok plays the kubelet for Nodes carrying this annotation (and only those, so the
# kubelet-less GITOPS_NODE stays as it is), moving their Pods through Running and Ready with
# real API writes; kube-scheduler binds Pods to them. kwok's behaviour is its Stages.
KWOK_STAGES = HERE / "kwok" / "stages.yaml"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_PREFIX = "kwok-node-"
# kube-apiserver's TaintNodesByCondition admission puts this on every new Node; only the
# node-lifecycle-controller would take it off, and that controller would also judge
# GITOPS_NODE dead. So the harness removes it itself once kwok reports the node Ready.
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
# kwok's chaos stage: Running Pods with this label (value "true") get their containers failed,
# exit code 1 unless the annotation f"{FAIL_CONTAINERS_LABEL}/exit-code" says otherwise.
FAIL_CONTAINERS_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
# Audit every write at Metadata level: that is where the API server records a webhook's
# auditAnnotations and, for impersonated requests, the real caller.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "None", "verbs": ["get", "list", "watch"]}, {"level": "Metadata"}],
}


class GoMissing(RuntimeError):
    """Go is not installed and the control-plane binaries are not in the cache."""


def ensure_binaries() -> Path:
    """Run build.sh (a no-op when the binaries are cached) and return their directory."""
    # stderr is inherited on purpose: a cold build takes many minutes and should say so.
    proc = subprocess.run(["bash", str(BUILD_SH)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode == 3:
        raise GoMissing("install Go >= 1.26 to build the test control plane, or set KUBECONFIG")
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SH} failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    # The port could in theory be taken between close() and the server's bind(); on a
    # loopback-only test machine that race has not been worth a retry loop.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL it when the test process dies, so
    even a SIGKILLed pytest leaves no etcd/apiserver behind (atexit would not run then)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Kube:
    """What tests use, for both flavours: kubectl and helm as a user, and setup helpers."""

    kubectl_bin: str
    local = False  # True when the API server runs here and can call a webhook on 127.0.0.1
    _helm_home: Path | None = None
    _helm_bin: Path | None = None

    def kubectl_argv(self, user: str) -> list[str]:
        raise NotImplementedError

    @property
    def helm_bin(self) -> Path:
        """Helm v4, built by build.sh from tests/cluster/helm (the version pinned there)."""
        if self._helm_bin is None:
            self._helm_bin = ensure_binaries() / "helm"
        return self._helm_bin

    def helm_argv(self, user: str) -> list[str]:
        """helm as `user` (its kubeconfig flags only; the caller adds the command)."""
        raise NotImplementedError

    def helm_env(self) -> dict[str, str]:
        """The environment for helm: its config, cache and data directories are private to
        this cluster object, so no test reads or writes the user's ~/.config/helm (repos,
        registry logins, plugins) and no test sees another's."""
        if self._helm_home is None:
            self._helm_home = Path(tempfile.mkdtemp(prefix="changegate-helm-"))
            atexit.register(shutil.rmtree, self._helm_home, ignore_errors=True)
        home = self._helm_home
        return {**os.environ, "HELM_CONFIG_HOME": str(home / "config"),
                "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}

    def helm(
        self, user: str, *args: str, input: str | None = None, timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.helm_argv(user), *args], input=input, capture_output=True, text=True,
            timeout=timeout, check=False, env=self.helm_env(),
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} as {user}: {proc.stderr.strip()}")
        return proc

    def kubectl(
        self, user: str, *args: str, input: str | None = None, timeout: float = 60, check=False
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.kubectl_argv(user), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} as {user}: {proc.stderr.strip()}")
        return proc

    def apply(self, *objects: dict[str, Any], user: str = "admin") -> None:
        """Server-side apply as the test harness: idempotent and leaves no last-applied
        annotation, so it never looks like a user's `kubectl apply`."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.kubectl(user, "apply", "--server-side", "--field-manager=changegate-tests",
                     "--force-conflicts", "-f", "-", input=body, check=True)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A namespace where the story cast may edit (RoleBinding to EDITOR_ROLE)."""
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": name, "labels": labels or {}}},
            _editor_binding(name),
        )

    def delete_namespace(self, name: str, timeout: float = 60) -> None:
        """Delete a namespace and return once no Pod is left in it. The namespace itself goes
        away in the background (the namespace controller starts 5 s after the request and
        re-checks only after half the Pods' grace period, 15 s by default), and nothing needs
        to wait for that. With fake nodes, call it before remove_nodes(): kwok finishes the
        Pods' deletion."""
        self.kubectl("admin", "delete", "namespace", name, "--wait=false", check=True)
        # A terminating namespace admits no new Pods, so no ReplicaSet can replace these and
        # "none left" stays true; deleting them here saves the namespace controller's 5 s.
        self.kubectl("admin", "delete", "pods", "--all", "-n", name, "--wait=false",
                     check=True)
        deadline = time.monotonic() + timeout
        while self.kubectl("admin", "get", "pods", "-n", name, "-o", "name",
                           check=True).stdout.strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods in namespace {name} not gone after {timeout:.0f} s")
            time.sleep(0.2)

    def _setup_identities(self) -> None:
        self.apply(*yaml.safe_load_all((HERE / "rbac.yaml").read_text()))
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GITOPS_NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": GITOPS_SERVICE_ACCOUNT, "namespace": GITOPS_NAMESPACE}},
        )


def _editor_binding(namespace: str) -> dict[str, Any]:
    subjects: list[dict[str, str]] = [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in EDITORS
    ]
    subjects.append(
        {"kind": "ServiceAccount", "name": GITOPS_SERVICE_ACCOUNT, "namespace": GITOPS_NAMESPACE}
    )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": EDITOR_ROLE, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": EDITOR_ROLE},
        "subjects": subjects,
    }


class ExternalCluster(_Kube):
    """A cluster someone else runs (KUBECONFIG). Users are impersonated by the admin."""

    def __init__(self, kubeconfig: str | Path, kubectl_bin: str | None = None) -> None:
        self.admin_kubeconfig = Path(kubeconfig)
        found = kubectl_bin or shutil.which("kubectl")
        if not found:
            raise RuntimeError("KUBECONFIG is set but no kubectl is on PATH")
        self.kubectl_bin = found
        self.kubeconfigs = {"admin": self.admin_kubeconfig}

    def kubectl_argv(self, user: str) -> list[str]:
        argv = [self.kubectl_bin, "--kubeconfig", str(self.admin_kubeconfig)]
        if user == GITOPS:
            # Without --as-group the API server adds the service account's own groups.
            return [*argv, "--as", GITOPS_USER]
        if user != "admin":
            argv += ["--as", user, *(f"--as-group={g}" for g in USERS[user])]
        return argv

    def helm_argv(self, user: str) -> list[str]:
        argv = [str(self.helm_bin), "--kubeconfig", str(self.admin_kubeconfig)]
        if user == GITOPS:
            return [*argv, "--kube-as-user", GITOPS_USER]
        if user != "admin":
            argv += ["--kube-as-user", user, *(f"--kube-as-group={g}" for g in USERS[user])]
        return argv

    def start(self) -> ExternalCluster:
        self._setup_identities()
        return self

    def stop(self) -> None:
        """Nothing to stop; what the tests created stays (namespaces are the tests' business)."""


class Cluster(_Kube):
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback. Use as a context manager
    or call start()/stop(); stop() also runs at exit and on any failure inside start().

    `nodes=N` (or add_nodes(N) later, remove_nodes() to undo) adds N fake nodes: kube-scheduler
    and kwok run, and Deployments really roll out. They need the controller manager, so
    nodes > 0 turns it on."""

    local = True

    def __init__(self, *, controller_manager: bool = False, workdir: Path | None = None,
                 keep_workdir: bool = False, nodes: int = 0,
                 webhook_client_cert: bool = False) -> None:
        self.with_controller_manager = controller_manager or nodes > 0
        self._initial_nodes = nodes
        self.fake_nodes: list[str] = []
        self._node_agents: list[subprocess.Popen[bytes]] = []
        # kube-apiserver presents a client certificate (from a CA of its own, not the
        # cluster's) to every webhook, as `--admission-control-config-file` configures it.
        self.with_webhook_client_cert = webhook_client_cert
        self._workdir_arg = workdir
        self.keep_workdir = keep_workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self.kubeconfigs: dict[str, Path] = {}
        self.startup_seconds: float | None = None

    # -- the public surface -------------------------------------------------------------
    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfigs["admin"]

    def kubectl_argv(self, user: str) -> list[str]:
        return [self.kubectl_bin, "--kubeconfig", str(self.kubeconfigs[user])]

    @property
    def helm_bin(self) -> Path:
        return self.bin_dir / "helm"

    def helm_argv(self, user: str) -> list[str]:
        return [str(self.helm_bin), "--kubeconfig", str(self.kubeconfigs[user])]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        began = time.monotonic()
        self.bin_dir = ensure_binaries()
        self.kubectl_bin = str(self.bin_dir / "kubectl")
        atexit.register(self.stop)
        try:
            self._prepare_files()
            self._start_etcd()
            self._start_apiserver()
            self._write_user_kubeconfigs()
            self._setup_identities()
            self._setup_gitops_token()
            if self.with_controller_manager:
                self._start_controller_manager()
            if self._initial_nodes:
                self.add_nodes(self._initial_nodes)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop everything we started, newest first; idempotent."""
        atexit.unregister(self.stop)
        while self._procs:
            _terminate(self._procs.pop())
        self._node_agents.clear()
        self.fake_nodes.clear()
        workdir = getattr(self, "workdir", None)
        if workdir is not None and not self.keep_workdir and self._workdir_arg is None:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- steps --------------------------------------------------------------------------
    def _prepare_files(self) -> None:
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="changegate-cluster-"))
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self.ca = CertificateAuthority(pki)
        self.apiserver_cert = self.ca.serving("apiserver", dns_names=("localhost",))
        # For a test webhook on https://127.0.0.1:<port>: its caBundle is the cluster CA.
        self.webhook_cert = self.ca.serving("webhook")
        self.client_certs: dict[str, KeyPair] = {
            user: self.ca.client(user, groups) for user, groups in USERS.items()
        }
        if self.with_webhook_client_cert:
            (pki / "webhook-client").mkdir(exist_ok=True)
            self.webhook_client_ca = CertificateAuthority(pki / "webhook-client",
                                                          "kube-apiserver-webhook-client-ca")
            self.webhook_client = self.webhook_client_ca.client("kube-apiserver")
            self._write_admission_config()
        self.sa_pub, self.sa_key = service_account_keys(pki)
        self.audit_log = self.workdir / "audit.log"
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))

    def _write_admission_config(self) -> None:
        """Kubernetes docs, "Authenticate apiservers": the user `*` matches every webhook."""
        kubeconfig = self.workdir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "users": [{"name": "*", "user": {
                "client-certificate": str(self.webhook_client.cert),
                "client-key": str(self.webhook_client.key)}}]}))
        self.admission_config = self.workdir / "admission-config.yaml"
        webhook = {"apiVersion": "apiserver.config.k8s.io/v1",
                   "kind": "WebhookAdmissionConfiguration", "kubeConfigFile": str(kubeconfig)}
        self.admission_config.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": "ValidatingAdmissionWebhook", "configuration": webhook}]}))

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self._procs.append(proc)
        return proc

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n"
                                   + _tail(self.workdir / f"{name}.log"))
            with contextlib.suppress(OSError):  # refused, reset, TLS not up yet, HTTP errors
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout:.0f} s; log tail:\n"
                                   + _tail(self.workdir / f"{name}.log"))
            time.sleep(0.2)

    def _start_etcd(self) -> None:
        port, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{port}"
        peer_url = f"http://127.0.0.1:{peer}"
        proc = self._spawn("etcd", [
            str(self.bin_dir / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync=true",  # test data: durability buys nothing, fsync costs seconds
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return json.load(r).get("health") == "true"

        self._wait("etcd", proc, healthy, timeout=30)

    def _start_apiserver(self) -> None:
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        args = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            # Without it the server looks for a default route and dies where there is none...
            "--advertise-address=127.0.0.1",
            # ...and with it 1.37 refuses to publish a loopback IP as the endpoint of the
            # `kubernetes` Service ("may not be in the loopback range"). No pod needs it here.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={self.apiserver_cert.cert}",
            f"--tls-private-key-file={self.apiserver_cert.key}",
            f"--client-ca-file={self.ca.pair.cert}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",  # default /var/run/kubernetes
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={self.sa_pub}",
            f"--service-account-signing-key-file={self.sa_key}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
        ]
        if self.with_webhook_client_cert:
            args.append(f"--admission-control-config-file={self.admission_config}")
        if not self.with_controller_manager:
            # Nothing creates the `default` ServiceAccount then, and this plugin would refuse
            # every Pod for lacking it.
            args.append("--disable-admission-plugins=ServiceAccount")
        proc = self._spawn("kube-apiserver", args)

        # Probe as admin: system:masters passes authorization even before the RBAC bootstrap
        # roles exist, so the first 200 means "ready", not "anonymous got lucky".
        admin = self.client_certs["admin"]
        ctx = ssl.create_default_context(cafile=str(self.ca.pair.cert))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=5) as r:
                return r.status == 200

        self._wait("kube-apiserver", proc, ready, timeout=READY_TIMEOUT)

    def _kubeconfig(self, user: str, auth: dict[str, str]) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "changegate-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": _b64(self.ca.pair.cert_pem()),
            }}],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": user, "context": {"cluster": "changegate-test", "user": user}}],
            "current-context": user,
        }
        path = self.workdir / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        self.kubeconfigs[user] = path
        return path

    def _write_user_kubeconfigs(self) -> None:
        for user, pair in self.client_certs.items():
            self._kubeconfig(user, {
                "client-certificate-data": _b64(pair.cert_pem()),
                "client-key-data": _b64(pair.key_pem()),
            })

    def _setup_gitops_token(self) -> None:
        """A token bound to a Pod, as Argo CD's controller gets from its projected volume, so
        the API server adds the pod name/uid to userInfo.extra like it does in production.
        The Pod stays Pending forever (nothing runs it); it only has to exist."""
        # A Node object (no kubelet behind it) so the Pod is "scheduled" and the token also
        # carries node-name/node-uid, as every pod-bound token in a real cluster does.
        self.apply(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": GITOPS_NODE}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": GITOPS_POD, "namespace": GITOPS_NAMESPACE},
             "spec": {"serviceAccountName": GITOPS_SERVICE_ACCOUNT, "nodeName": GITOPS_NODE,
                      "containers": [{"name": "controller", "image": "registry.invalid/argocd"}]}},
        )
        token = self.kubectl(
            "admin", "create", "token", GITOPS_SERVICE_ACCOUNT, "-n", GITOPS_NAMESPACE,
            "--bound-object-kind=Pod", f"--bound-object-name={GITOPS_POD}", "--duration=24h",
            check=True,
        ).stdout.strip()
        self._kubeconfig(GITOPS, {"token": token})

    def _start_controller_manager(self) -> None:
        port = free_port()
        admin = str(self.admin_kubeconfig)
        proc = self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--controllers={KCM_CONTROLLERS}",
            f"--service-account-private-key-file={self.sa_key}",
            f"--root-ca-file={self.ca.pair.cert}",
            # One token per controller, as kubeadm runs it: writes show up as
            # system:serviceaccount:kube-system:<controller>, which is what a webhook sees live.
            "--use-service-account-credentials=true",
        ])
        self._wait("kube-controller-manager", proc, _healthz(f"https://127.0.0.1:{port}/healthz"),
                   timeout=60)

    # -- fake nodes -------------------------------------------------------------------------
    def add_nodes(self, count: int, timeout: float = 60) -> list[str]:
        """Add `count` kwok-managed Nodes, Ready and schedulable, and return their names.
        Starts kube-scheduler and kwok on first use."""
        if not self.with_controller_manager:
            raise RuntimeError("fake nodes need the controller manager (Deployments -> Pods)")
        if not self._node_agents:
            self._start_scheduler()
            self._start_kwok()
        first = len(self.fake_nodes)
        names = [f"{FAKE_NODE_PREFIX}{i}" for i in range(first, first + count)]
        self.apply(*(
            # The labels a kubelet registers with, so nodeSelectors written for real clusters
            # work; kwok fills in status (Ready, capacity, addresses).
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": name, "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                          "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                     "kubernetes.io/arch": "amd64"}}}
            for name in names
        ))
        for name in names:
            self._wait_node_ready(name, timeout)
            # Idempotent: the trailing "-" removes it, and fails only if it is already gone.
            self.kubectl("admin", "taint", "nodes", name, f"{NOT_READY_TAINT}:NoSchedule-")
            self.fake_nodes.append(name)
        return names

    def remove_nodes(self) -> None:
        """Delete the fake nodes and stop kwok and kube-scheduler, so later tests see a cluster
        without running pods again. Pods still bound to the nodes stay (Pending/Running as
        last written): delete them, or their namespaces, before calling this."""
        if self.fake_nodes:
            self.kubectl("admin", "delete", "nodes", *self.fake_nodes, "--timeout=60s",
                         timeout=70, check=True)
            self.fake_nodes.clear()
        while self._node_agents:
            proc = self._node_agents.pop()
            self._procs.remove(proc)
            _terminate(proc)

    def _wait_node_ready(self, name: str, timeout: float) -> None:
        # `kubectl wait` watches: returns as soon as kwok writes the Ready condition.
        proc = self.kubectl("admin", "wait", "--for=condition=Ready", f"node/{name}",
                            f"--timeout={timeout:.0f}s", timeout=timeout + 10)
        if proc.returncode != 0:
            raise TimeoutError(f"node {name} not Ready: {proc.stderr.strip()}; kwok log tail:\n"
                               + self.logs("kwok"))

    def _start_scheduler(self) -> None:
        port = free_port()
        admin = str(self.admin_kubeconfig)
        proc = self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
        ])
        self._node_agents.append(proc)
        self._wait("kube-scheduler", proc, _healthz(f"https://127.0.0.1:{port}/healthz"),
                   timeout=60)

    def _start_kwok(self) -> None:
        port = free_port()
        proc = self._spawn("kwok", [
            str(self.bin_dir / "kwok"),
            f"--kubeconfig={self.admin_kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            # Pod IPs kwok hands out; outside the service range (10.0.0.0/24) on purpose.
            "--cidr=10.244.0.1/16", "--node-ip=10.243.0.1",
            f"--server-address=127.0.0.1:{port}",
            f"--config={KWOK_STAGES}",
        ])
        self._node_agents.append(proc)
        self._wait("kwok", proc, _healthz(f"http://127.0.0.1:{port}/healthz"), timeout=60)

    def logs(self, name: str = "kube-apiserver", lines: int = 60) -> str:
        return _tail(self.workdir / f"{name}.log", lines)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # Each server runs in its own process group: signal the group, not the pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthz(url: str) -> Callable[[], bool]:
    """A readiness probe for a component's /healthz. Their serving certs are self-signed in
    memory, and /healthz is always allowed, so no verification and no credentials."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def healthy() -> bool:
        context = insecure if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return bool(r.status == 200)

    return healthy


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def export_lines(cluster: Cluster, users: Iterable[str] | None = None) -> list[str]:
    """Shell lines that point kubectl at the cluster (used by `python -m tests.cluster up`)."""
    lines = [f"export KUBECONFIG={cluster.admin_kubeconfig}"]
    for user in users or cluster.kubeconfigs:
        if user != "admin":
            lines.append(f"# {user}: kubectl --kubeconfig {cluster.kubeconfigs[user]}")
    return lines
