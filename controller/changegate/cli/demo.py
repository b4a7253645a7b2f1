"""`changegate demo`: the whole story against the real webhook server, no cluster needed.

It makes keys for alice (requester), bob and carol (approvers) and dana (on-call), starts
`changegate serve --static DIR` over TLS on 127.0.0.1 with the demo's own state files, and
plays what kube-apiserver would send. Between steps it rewrites the state files and tells
the server to reload them (SIGHUP), as the cache would after a watch event. Exit 0 only if
every step got the verdict it should.
"""

from __future__ import annotations

import copy
import json
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from changegate.core.compose import change_approval, manifest_for, signed
from changegate.core.digest import digest
from changegate.core.dsse import PrivateKey, generate
from changegate.core.errors import ChangeGateError
from changegate.core.names import BREAK_GLASS, GROUP, KIND, PLURAL, VERSION

NAMESPACE = "payments"
CLUSTER = "demo"
POLICY = {"clusterName": CLUSTER, "breakGlassGroups": ["sre-oncall"],
          "policyAdminGroups": ["platform-admins"]}
USERS = {"alice": ["payments-devs"], "bob": ["approvers"], "carol": ["approvers"],
         "dana": ["sre-oncall"], "mallory": ["payments-devs"]}


def _load(name: str) -> dict[str, Any]:
    text = resources.files("changegate.demo").joinpath(name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def review(operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None, user: str,
           *, dry_run: bool = False) -> dict[str, Any]:
    """An AdmissionReview shaped as kube-apiserver sends it to a validating webhook."""
    some = obj or old or {}
    kind = some["kind"]
    group, version = ("apps", "v1") if kind == "Deployment" else (
        (GROUP, VERSION) if kind == KIND else ("", "v1"))
    plural = {"Deployment": "deployments", "ConfigMap": "configmaps", KIND: PLURAL}[kind]
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": plural}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": some["metadata"]["name"],
        "namespace": some["metadata"].get("namespace", NAMESPACE), "operation": operation,
        "userInfo": {"username": user, "groups": [*USERS.get(user, []),
                                                  "system:authenticated"]},
        "object": obj, "oldObject": old, "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1",
                    "kind": f"{operation.title()}Options"}}}


def updated(live: dict[str, Any], mutate: Any) -> dict[str, Any]:
    """The object the API server would hand the webhook after a client-side apply."""
    new = copy.deepcopy(live)
    mutate(new)
    if new.get("spec") != live.get("spec"):
        new["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
    return new


def persisted(obj: dict[str, Any]) -> dict[str, Any]:
    """The object once stored: every write gets a new resourceVersion (the webhook caches
    the old object's digest by uid and resourceVersion, as it may)."""
    out = copy.deepcopy(obj)
    out["metadata"]["resourceVersion"] = str(int(out["metadata"]["resourceVersion"]) + 1)
    return out


def set_image(tag: str) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = (
            f"registry.example/checkout:{tag}")
    return mutate


@dataclass
class Server:
    """`changegate serve --static` in a subprocess, over TLS on 127.0.0.1."""

    state: Path
    port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0

    def start(self) -> None:
        # A throw-away CA (trustme) so the demo runs the real server over real TLS with no
        # setup; production certificates come from cert-manager or the chart.
        import trustme

        authority = trustme.CA()
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        cert, key = self.state.parent / "tls.crt", self.state.parent / "tls.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        key.touch(mode=0o600)
        leaf.private_key_pem.write_to_path(str(key))
        self.context = ssl.create_default_context()
        authority.configure_trust(self.context)
        self.log = (self.state.parent / "serve.log").open("wb")
        self.process = subprocess.Popen(  # the real server, as a person would start it
            [sys.executable, "-m", "changegate", "serve", "--static", str(self.state),
             "--tls-cert", str(cert), "--tls-key", str(key), "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--namespace", "changegate"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.generation = self._wait_ready(lambda gen: gen >= 1)

    def _readyz(self) -> int:
        probe = urllib.request.Request(f"http://127.0.0.1:{self.metrics_port}/readyz",
                                       headers={"Accept": "application/json"})
        with urllib.request.urlopen(probe, timeout=2) as response:  # noqa: S310 - loopback
            body = json.loads(response.read() or b"{}")
            return int(body.get("generation", 1))

    def _wait_ready(self, done: Any, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ChangeGateError(f"changegate serve exited: see {self.log.name}")
            try:
                generation = self._readyz()
                if done(generation):
                    return generation
            except OSError:
                pass
            time.sleep(0.05)
        raise ChangeGateError(f"changegate serve did not become ready: see {self.log.name}")

    def reload(self) -> None:
        assert self.process is not None
        before = self.generation
        self.process.send_signal(signal.SIGHUP)
        self.generation = self._wait_ready(lambda gen: gen > before)

    def post(self, doc: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port}/validate", data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(  # noqa: S310 - https to our own loopback server
                request, context=self.context, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())["response"]
            return answer

    def metrics(self) -> str:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class Story:
    """Writes the state files, plays requests, and keeps score."""

    def __init__(self, server: Server, keys: dict[str, PrivateKey], out: Any) -> None:
        self.server, self.keys, self.echo = server, keys, out
        self.approvals: dict[str, dict[str, Any]] = {}
        self.ledger: dict[str, str] = {}
        self.failures: list[str] = []
        self.step = 0

    def write_state(self, reload: bool = True) -> None:
        state = self.server.state
        trust = {"approvers": [
            {"name": name, "namespaces": [NAMESPACE], "keys": [key.public.pem()]}
            for name, key in self.keys.items() if name in ("alice", "bob", "carol")]}
        (state / "trust.yaml").write_text(yaml.safe_dump(trust))
        (state / "policy.yaml").write_text(yaml.safe_dump(POLICY))
        namespace = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": NAMESPACE, "labels": {"tier": "tier-1"}}}
        (state / "namespace.yaml").write_text(yaml.safe_dump(namespace))
        items = list(self.approvals.values())
        (state / "approvals.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": items}))
        ledger = [{"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": f"changegate-ledger-{n[0]}", "namespace": "changegate"},
                   "data": {n: v}} for n, v in self.ledger.items()]
        (state / "ledger.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": ledger}))
        if reload:
            self.server.reload()

    def store(self, approval: dict[str, Any]) -> None:
        """As the API server would store it: a uid and a new resourceVersion."""
        meta = approval["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)
        self.approvals[meta["name"]] = approval
        self.write_state()

    def play(self, title: str, doc: dict[str, Any], expect_allowed: bool,
             expect_reason: str | None = None, kubectl: str = "") -> dict[str, Any]:
        self.step += 1
        self.echo(click.style(f"\n{self.step:2d}. {title}", bold=True))
        if kubectl:
            self.echo(f"    $ {kubectl}")
        answer = self.server.post(doc)
        allowed = bool(answer.get("allowed"))
        message = (answer.get("status") or {}).get("message", "")
        decision = (answer.get("auditAnnotations") or {}).get("decision", "")
        if allowed:
            for warning in answer.get("warnings", []):
                self.echo(f"    Warning: {warning}")
            self.echo(f"    admitted ({decision})")
        else:
            entry = doc["request"]["resource"]["resource"]
            self.echo(f'    Error from server (Forbidden): admission webhook '
                      f'"{entry}.changegate.io" denied the request:')
            for line in message.splitlines():
                self.echo(f"      {line}")
        ok = allowed == expect_allowed and (
            expect_reason is None or decision.endswith(":" + expect_reason))
        verdict = "as expected" if ok else f"UNEXPECTED (wanted allowed={expect_allowed}, " \
                                           f"reason={expect_reason}, got {decision})"
        self.echo(click.style(f"    -> {verdict}", fg="green" if ok else "red"))
        if not ok:
            self.failures.append(f"step {self.step}: {title}")
        if answer.get("uid") != doc["request"]["uid"]:
            self.failures.append(f"step {self.step}: the answer names another request")
        return answer


def run_story(story: Story) -> None:
    keys = story.keys
    live = _load("deployment.json")
    config = _load("configmap.json")
    now = datetime.now(UTC).replace(microsecond=0)
    new = updated(live, set_image("1.42.0"))

    story.play("alice applies an image change (1.41.0 -> 1.42.0) with no approval",
               review("UPDATE", new, live, "alice"), False, "no_approval",
               "kubectl apply -f checkout.yaml")

    def request(name: str, proposed: dict[str, Any] | None, current: dict[str, Any] | None,
                operation: str = "UPDATE", record: str = "CHG-1234", user: str = "alice",
                target: dict[str, Any] | None = None) -> dict[str, Any]:
        some = target or proposed or current or {}
        return change_approval(
            namespace=NAMESPACE, name=name, cluster=CLUSTER,
            target={"apiVersion": some["apiVersion"], "kind": some["kind"],
                    "name": some["metadata"]["name"],
                    "uid": (current or {}).get("metadata", {}).get("uid", "none")},
            operation=operation, from_digest=digest(current), to_digest=digest(proposed),
            record_id=record, record_url=f"https://itsm.example/{record}",
            requested_by=user, issued_at=now, expires_at=now + timedelta(hours=4),
            manifest=manifest_for(proposed) if proposed else None, nonce=str(uuid.uuid4()))

    approval = request("chg-1234-checkout", new, live)
    story.play("alice requests approval: the webhook checks the ChangeApproval itself",
               review("CREATE", approval, None, "alice"), True, "approved",
               "changegate request -f checkout.yaml -n payments --record CHG-1234")
    story.store(approval)
    approval = signed(approval, keys["bob"])
    story.store(approval)
    story.play("bob approves; alice applies again: still one approval short",
               review("UPDATE", new, live, "alice"), False, "approvals_insufficient",
               "kubectl apply -f checkout.yaml")
    approval = signed(approval, keys["alice"])
    story.store(approval)
    story.play("alice signs her own change: it does not count",
               review("UPDATE", new, live, "alice"), False, "self_approval")

    forged_target = updated(live, lambda o: o["spec"].update(replicas=4))
    forged = signed(request("chg-1299-checkout", forged_target, live, record="CHG-1299"),
                    keys["bob"])
    fake = signed(forged, keys["mallory"])["spec"]["signatures"][-1]
    fake["keyid"] = keys["carol"].public.keyid  # claims to be carol
    forged["spec"]["signatures"].append(fake)
    story.play("mallory forges carol's signature on another change: refused at the door",
               review("CREATE", forged, None, "alice"), False, "signature_invalid")

    approval = signed(approval, keys["carol"])
    story.store(approval)
    story.play("carol approves too: bob and carol, neither of them the requester",
               review("UPDATE", new, live, "alice"), True, "approved",
               "kubectl apply -f checkout.yaml")
    import base64
    nonce = json.loads(base64.b64decode(approval["spec"]["statement"]))["predicate"]["nonce"]
    story.ledger[nonce] = json.dumps({"approval": f"{NAMESPACE}/chg-1234-checkout"})
    story.approvals["chg-1234-checkout"].setdefault("status", {})["phase"] = "Applied"
    story.echo("    (the operator sees the change persisted: phase Applied, nonce in the ledger)")
    story.write_state()

    current = persisted(new)
    other = updated(current, set_image("6.6.6"))
    story.play("someone replays that approval for a different change (1.42.0 -> 6.6.6)",
               review("UPDATE", other, current, "mallory"), False, "no_approval")
    rolled_back = persisted(updated(current, set_image("1.41.0")))
    again = updated(rolled_back, set_image("1.42.0"))
    story.play("someone rolls back and replays the approved change itself",
               review("UPDATE", again, rolled_back, "mallory"), False, "approval_used")

    new_config = updated(config, lambda o: o["data"].update(PAYMENT_TIMEOUT_MS="250"))
    no_record = request("checkout-config-hotfix", new_config, config, record="none")
    story.play("alice requests a ConfigMap change without a change record",
               review("CREATE", no_record, None, "alice"), False, "change_record_invalid")
    story.play("...so the ConfigMap change stays denied",
               review("UPDATE", new_config, config, "alice"), False, "no_approval",
               "kubectl apply -f checkout-config.yaml")

    story.play("a dry-run of an unapproved change is admitted with a warning",
               review("UPDATE", new_config, config, "alice", dry_run=True), True, "no_approval",
               "kubectl apply --dry-run=server -f checkout-config.yaml")

    rollback = updated(current, set_image("1.41.0"))
    rollback["metadata"].setdefault("annotations", {})[BREAK_GLASS] = (
        "INC-5521 rollback: checkout 5xx at 40%")
    story.play("dana (sre-oncall) rolls back under break-glass: admitted, loudly",
               review("UPDATE", rollback, current, "dana"), True, "break_glass",
               "changegate break-glass --reason 'INC-5521 ...' rollback deployment/checkout")

    story.step += 1
    story.echo(click.style(f"\n{story.step:2d}. what the shipped alerts fire on (/metrics)",
                           bold=True))
    wanted = ("changegate_rejected_changes_total", "changegate_break_glass_total",
              "changegate_signature_verifications_total")
    lines = [line for line in story.server.metrics().splitlines()
             if line.startswith(wanted) and not line.endswith(" 0.0")]
    for line in lines:
        story.echo(f"    {line}")
    for name in wanted:
        if not any(line.startswith(name) for line in lines):
            story.failures.append(f"metric {name} missing")


@contextmanager
def demo_server() -> Iterator[tuple[Server, Path]]:
    with tempfile.TemporaryDirectory(prefix="changegate-demo-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        server = Server(state)
        try:
            yield server, Path(tmp)
        finally:
            server.stop()


@click.command()
@click.option("--keys-dir", type=click.Path(file_okay=False),
              help="Also write the demo's private keys here (mode 0600).")
def demo(keys_dir: str | None) -> None:
    """The whole story on an embedded default, no cluster: exit 0 if every verdict is right."""
    keys = {name: generate() for name in ("alice", "bob", "carol", "dana", "mallory")}
    if keys_dir:
        Path(keys_dir).mkdir(parents=True, exist_ok=True)
        for name, key in keys.items():
            path = Path(keys_dir) / f"{name}.key"
            path.touch(mode=0o600)
            path.write_bytes(key.pem())
    click.echo("changegate demo: tier-1 namespace 'payments'; alice requests, bob and carol "
               "approve, dana is on call.")
    with demo_server() as (server, _):
        story = Story(server, keys, click.echo)
        story.write_state(reload=False)
        server.start()
        click.echo(f"webhook: https://127.0.0.1:{server.port}/validate (real TLS), metrics "
                   f"on :{server.metrics_port}")
        run_story(story)
    if story.failures:
        click.echo(click.style("\nFAILED: " + "; ".join(story.failures), fg="red"), err=True)
        raise SystemExit(1)
    click.echo(click.style(f"\nAll {story.step} steps got the expected verdict.", fg="green"))
