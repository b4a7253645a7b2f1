"""Admin and on-call commands: whoami, onboard, break-glass, emergency-off / emergency-on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from changegate.core.errors import ChangeGateError
from changegate.core.policy import ENFORCEMENT_ANNOTATION
from changegate.kube import sync_client

BREAK_GLASS = "changegate.io/break-glass"
VWC_NAME = "changegate"
GATED_ENTRIES = ("deployments.changegate.io", "configmaps.changegate.io", "scale.changegate.io")
EMERGENCY_ANNOTATION = "changegate.io/emergency-off"

kube_options = [
    # No envvar: changegate.kube reads $KUBECONFIG itself, a list of files merged as kubectl
    # merges them; as an option's value it would be taken for one file name.
    click.option("--kubeconfig", help="Path to the kubeconfig file (default: $KUBECONFIG, "
                                      "~/.kube/config)."),
    click.option("--context", help="The kubeconfig context to use."),
]


def with_kube(fn: Any) -> Any:
    for option in reversed(kube_options):
        fn = option(fn)
    return fn


def api_error(exc: Exception) -> ChangeGateError:
    """One readable line from a kubernetes ApiException or a connection failure."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = str(body)[:200]
    if status:
        return ChangeGateError(f"API server answered {status}: {message or exc}")
    return ChangeGateError(f"cannot reach the API server: {str(exc).splitlines()[0]}")


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise api_error(exc) from exc
    except (HTTPError, OSError) as exc:
        raise api_error(exc) from exc


def self_review(api: Any) -> dict[str, Any]:
    from kubernetes import client

    result = call(client.AuthenticationV1Api(api).create_self_subject_review,
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    info = result.status.user_info
    return {"username": info.username, "groups": list(info.groups or []),
            "uid": info.uid or ""}


@click.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the SelfSubjectReview, as `kubectl auth whoami "
                                      "-o json` prints it.")
@with_kube
def whoami(kubeconfig: str | None, context: str | None, output: str) -> None:
    """Print the username and groups the API server sees (for trust-store entries)."""
    who = self_review(sync_client(kubeconfig, context))
    if output == "json":
        user_info = {"username": who["username"], "uid": who["uid"], "groups": who["groups"]}
        click.echo(json.dumps({"apiVersion": "authentication.k8s.io/v1",
                               "kind": "SelfSubjectReview",
                               "status": {"userInfo": user_info}}, indent=2))
        return
    click.echo(f"username: {who['username']}")
    click.echo(f"groups:   {', '.join(who['groups'])}")


@click.command()
@click.argument("namespace")
@click.option("--mode", type=click.Choice(["warn", "deny", "canary"]), default="warn",
              show_default=True, help="Start in warn to see who would be denied.")
@click.option("--label", "label", default="tier=tier-1", show_default=True,
              help="The policy's tierSelector label, KEY=VALUE.")
@with_kube
def onboard(namespace: str, mode: str, label: str, kubeconfig: str | None,
            context: str | None) -> None:
    """Label a namespace tier-1 and set its mode, in one write."""
    from kubernetes import client

    key, sep, value = label.partition("=")
    if not sep or not key:
        raise ChangeGateError("--label must be KEY=VALUE")
    api = client.CoreV1Api(sync_client(kubeconfig, context))
    patch = {"metadata": {"labels": {key: value}, "annotations": {ENFORCEMENT_ANNOTATION: mode}}}
    call(api.patch_namespace, namespace, patch, _content_type="application/merge-patch+json")
    click.echo(f"namespace/{namespace} is tier-1 with enforcement {mode}")


def _emergency(policy: str, reason: str | None, kubeconfig: str | None,
               context: str | None) -> None:
    from kubernetes import client

    api = client.AdmissionregistrationV1Api(sync_client(kubeconfig, context))
    vwc = call(api.read_validating_webhook_configuration, VWC_NAME)
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": vwc.metadata.resource_version}]
    changed = []
    for index, hook in enumerate(vwc.webhooks or []):
        if hook.name in GATED_ENTRIES and hook.failure_policy != policy:
            ops.append({"op": "replace", "path": f"/webhooks/{index}/failurePolicy",
                        "value": policy})
            changed.append(hook.name)
    note = (f"{reason} (at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ})" if reason else None)
    has_annotations = bool(vwc.metadata.annotations)
    if note:
        path = "/metadata/annotations"
        ops.append({"op": "add", "path": f"{path}/{EMERGENCY_ANNOTATION.replace('/', '~1')}",
                    "value": note} if has_annotations else
                   {"op": "add", "path": path, "value": {EMERGENCY_ANNOTATION: note}})
    elif has_annotations and EMERGENCY_ANNOTATION in vwc.metadata.annotations:
        ops.append({"op": "remove", "path": "/metadata/annotations/"
                    + EMERGENCY_ANNOTATION.replace("/", "~1")})
    call(api.patch_validating_webhook_configuration, VWC_NAME, ops,
         _content_type="application/json-patch+json")
    click.echo(f"{VWC_NAME}: failurePolicy {policy} on {', '.join(changed) or 'nothing to change'}")


@click.command("emergency-off")
@click.option("--reason", required=True, help="Why; recorded on the webhook configuration.")
@with_kube
def emergency_off(reason: str, kubeconfig: str | None, context: str | None) -> None:
    """Set the gated entries to failurePolicy Ignore (cluster administrators only)."""
    _emergency("Ignore", reason, kubeconfig, context)
    # Only what is true today: the operator does not yet watch the webhook configuration
    # (no changegate_webhook_config_drift), so no drift alert can remind anyone. What the
    # API server counts while it admits without changegate is real (SPEC §8, fail open).
    click.echo("while changegate cannot be reached, gated writes are now admitted unchecked; "
               "the API server counts each one (apiserver_admission_webhook_fail_open_count, "
               "alert ChangeGateWebhookFailingOpen) and the reason is recorded on the webhook "
               "configuration, but no alert reminds you that it is off: run "
               "`changegate emergency-on` as soon as the webhook is back")


@click.command("emergency-on")
@with_kube
def emergency_on(kubeconfig: str | None, context: str | None) -> None:
    """Set the gated entries back to failurePolicy Fail."""
    _emergency("Fail", None, kubeconfig, context)


def _target(ref: str) -> str:
    kind, _, name = ref.partition("/")
    if kind not in ("deployment", "deployments", "deploy") or not name:
        raise ChangeGateError(f"{ref!r}: expected deployment/NAME")
    return name


def _stamp(reason: str) -> str:
    # A fresh value every time: an annotation left unchanged from the old object grants nothing.
    return f"{reason} @ {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"


@click.group("break-glass", invoke_without_command=False)
@click.option("--reason", help="[required] Incident and reason, e.g. 'INC-123 rollback'.")
@click.option("-n", "--namespace", help="[required] Namespace (here or after the subcommand).")
@with_kube
@click.pass_context
def break_glass(ctx: click.Context, reason: str | None, namespace: str | None,
                kubeconfig: str | None, context: str | None) -> None:
    """The on-call path: one write carrying a fresh break-glass annotation, loud and recorded."""
    # Checked and connected when a subcommand runs, so `break-glass scale --help` works
    # and -n/--kubeconfig/--context may also follow the subcommand, as in kubectl.
    ctx.obj = {"reason": reason, "namespace": namespace, "kubeconfig": kubeconfig,
               "context": context}


def _where(fn: Any) -> Any:
    """-n, --kubeconfig and --context after the subcommand too; there they win."""
    fn = click.option("--context", "sub_context", help="The kubeconfig context to use.")(fn)
    fn = click.option("--kubeconfig", "sub_kubeconfig", help="Path to the kubeconfig file.")(fn)
    return click.option("-n", "--namespace", "sub_namespace", help="Namespace.")(fn)


def _connect(ctx: click.Context, sub_namespace: str | None, sub_kubeconfig: str | None,
             sub_context: str | None) -> None:
    obj = ctx.obj
    if not obj["reason"]:
        raise click.UsageError("Missing option '--reason'.", ctx)
    obj["namespace"] = sub_namespace or obj["namespace"]
    if not obj["namespace"]:
        raise click.UsageError("Missing option '-n' / '--namespace'.", ctx)
    obj["api"] = sync_client(sub_kubeconfig or obj["kubeconfig"], sub_context or obj["context"])


def _patch_deployment(ctx: click.Context, name: str, spec: dict[str, Any]) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(ctx.obj["api"])
    body = {"metadata": {"annotations": {BREAK_GLASS: _stamp(ctx.obj["reason"])}}, "spec": spec}
    call(apps.patch_namespaced_deployment, name, ctx.obj["namespace"], body,
         _content_type="application/strategic-merge-patch+json")
    click.echo(f"deployment/{name} patched under break-glass: {ctx.obj['reason']}")
    click.echo("A review is owed. Suspend GitOps sync for this object so the bad state is not "
               "re-applied (Argo CD: disable auto-sync on the Application; Flux: "
               "flux suspend kustomization ...).")


@break_glass.command()
@click.argument("ref")
@click.option("--to-revision", type=int, default=0, help="Revision to roll back to "
              "(default: the previous one).")
@_where
@click.pass_context
def rollback(ctx: click.Context, ref: str, to_revision: int, sub_namespace: str | None,
             sub_kubeconfig: str | None, sub_context: str | None) -> None:
    """Roll deployment/NAME back to a previous ReplicaSet's template."""
    from kubernetes import client

    _connect(ctx, sub_namespace, sub_kubeconfig, sub_context)
    name, ns = _target(ref), ctx.obj["namespace"]
    apps = client.AppsV1Api(ctx.obj["api"])
    deployment = call(apps.read_namespaced_deployment, name, ns)
    selector = ",".join(f"{k}={v}" for k, v in
                        (deployment.spec.selector.match_labels or {}).items())
    sets = call(apps.list_namespaced_replica_set, ns, label_selector=selector).items
    revision = "deployment.kubernetes.io/revision"
    owned = sorted((int((rs.metadata.annotations or {}).get(revision, 0)), rs) for rs in sets
                   if any(o.uid == deployment.metadata.uid
                          for o in rs.metadata.owner_references or []))
    if len(owned) < 2 and not to_revision:
        raise ChangeGateError(f"deployment/{name} has no previous revision to roll back to")
    wanted = [rs for rev, rs in owned if rev == to_revision] if to_revision else [owned[-2][1]]
    if not wanted:
        raise ChangeGateError(f"deployment/{name} has no revision {to_revision}")
    template = ctx.obj["api"].sanitize_for_serialization(wanted[0].spec.template)
    template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
    _patch_deployment(ctx, name, {"template": template})


@break_glass.command()
@click.argument("ref")
@_where
@click.pass_context
def pause(ctx: click.Context, ref: str, sub_namespace: str | None, sub_kubeconfig: str | None,
          sub_context: str | None) -> None:
    """Pause deployment/NAME's rollout."""
    _connect(ctx, sub_namespace, sub_kubeconfig, sub_context)
    _patch_deployment(ctx, _target(ref), {"paused": True})


@break_glass.command()
@click.argument("ref")
@click.option("--replicas", type=int, required=True)
@_where
@click.pass_context
def scale(ctx: click.Context, ref: str, replicas: int, sub_namespace: str | None,
          sub_kubeconfig: str | None, sub_context: str | None) -> None:
    """Set deployment/NAME's replicas."""
    _connect(ctx, sub_namespace, sub_kubeconfig, sub_context)
    _patch_deployment(ctx, _target(ref), {"replicas": replicas})
