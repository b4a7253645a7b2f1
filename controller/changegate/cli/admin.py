"""Admin and on-call commands: whoami, onboard, break-glass, emergency-off / emergency-on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click

from changegate.core.errors import ChangeGateError
from changegate.core.names import BREAK_GLASS
from changegate.core.policy import ENFORCEMENT_ANNOTATION
from changegate.kube import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    ApiError,
    Kube,
    connect,
    object_path,
)

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


def _call(api: Kube, method: str, path: str, **kwargs: Any) -> Any:
    """The answer's body; a refusal in the words these commands always used."""
    try:
        return api.call(method, path, **kwargs).body
    except ApiError as exc:
        raise ChangeGateError(f"API server answered {exc.status}: {exc}") from exc


def _vwc_path(name: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"


@click.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the SelfSubjectReview, as `kubectl auth whoami "
                                      "-o json` prints it.")
@with_kube
def whoami(kubeconfig: str | None, context: str | None, output: str) -> None:
    """Print the username and groups the API server sees (for trust-store entries)."""
    review = _call(connect(kubeconfig, context), "POST",
                   "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                   body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    if output == "json":  # the API server's own answer, as `kubectl auth whoami -o json`
        click.echo(json.dumps(review, indent=2))
        return
    who = (review.get("status") or {}).get("userInfo") or {}
    click.echo(f"username: {who.get('username', '')}")
    click.echo(f"groups:   {', '.join(who.get('groups') or [])}")


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
    key, sep, value = label.partition("=")
    if not sep or not key:
        raise ChangeGateError("--label must be KEY=VALUE")
    patch = {"metadata": {"labels": {key: value}, "annotations": {ENFORCEMENT_ANNOTATION: mode}}}
    _call(connect(kubeconfig, context), "PATCH",
          f"/api/v1/namespaces/{quote(namespace, safe='')}", body=patch,
          content_type=MERGE_PATCH)
    click.echo(f"namespace/{namespace} is tier-1 with enforcement {mode}")


def _emergency(policy: str, reason: str | None, kubeconfig: str | None,
               context: str | None) -> None:
    api = connect(kubeconfig, context)
    vwc = _call(api, "GET", _vwc_path(VWC_NAME))
    metadata = vwc.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": metadata.get("resourceVersion")}]
    changed = []
    for index, hook in enumerate(vwc.get("webhooks") or []):
        if hook.get("name") in GATED_ENTRIES and hook.get("failurePolicy") != policy:
            ops.append({"op": "replace", "path": f"/webhooks/{index}/failurePolicy",
                        "value": policy})
            changed.append(hook["name"])
    note = (f"{reason} (at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ})" if reason else None)
    has_annotations = bool(annotations)
    if note:
        path = "/metadata/annotations"
        ops.append({"op": "add", "path": f"{path}/{EMERGENCY_ANNOTATION.replace('/', '~1')}",
                    "value": note} if has_annotations else
                   {"op": "add", "path": path, "value": {EMERGENCY_ANNOTATION: note}})
    elif EMERGENCY_ANNOTATION in annotations:
        ops.append({"op": "remove", "path": "/metadata/annotations/"
                    + EMERGENCY_ANNOTATION.replace("/", "~1")})
    _call(api, "PATCH", _vwc_path(VWC_NAME), body=ops, content_type=JSON_PATCH)
    click.echo(f"{VWC_NAME}: failurePolicy {policy} on {', '.join(changed) or 'nothing to change'}")


@click.command("emergency-off")
@click.option("--reason", required=True, help="Why; recorded on the webhook configuration.")
@with_kube
def emergency_off(reason: str, kubeconfig: str | None, context: str | None) -> None:
    """Set the gated entries to failurePolicy Ignore (cluster administrators only)."""
    _emergency("Ignore", reason, kubeconfig, context)
    # The operator compares the configuration with the chart's rendering
    # (changegate_webhook_config_drift), so the drift alert pages until emergency-on; the
    # API server counts what it admits without changegate (SPEC §8, fail open), and the
    # operator owes a review for each such change (unexplained).
    click.echo("while changegate cannot be reached, gated writes are now admitted unchecked; "
               "the API server counts each one (apiserver_admission_webhook_fail_open_count, "
               "alert ChangeGateWebhookFailingOpen), the operator records each as an "
               "unexplained change that owes a review, and ChangeGateWebhookConfigDrifted "
               "pages until you run `changegate emergency-on` once the webhook is back")


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
    obj["api"] = connect(sub_kubeconfig or obj["kubeconfig"], sub_context or obj["context"])


def _patch_deployment(ctx: click.Context, name: str, spec: dict[str, Any]) -> None:
    body = {"metadata": {"annotations": {BREAK_GLASS: _stamp(ctx.obj["reason"])}}, "spec": spec}
    _call(ctx.obj["api"], "PATCH", object_path("apps/v1", "Deployment", ctx.obj["namespace"],
                                                name),
          body=body, content_type=STRATEGIC_MERGE_PATCH)
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
    _connect(ctx, sub_namespace, sub_kubeconfig, sub_context)
    name, ns = _target(ref), ctx.obj["namespace"]
    api: Kube = ctx.obj["api"]
    deployment = _call(api, "GET", object_path("apps/v1", "Deployment", ns, name))
    selector = ",".join(f"{k}={v}" for k, v in
                        (deployment["spec"]["selector"].get("matchLabels") or {}).items())
    sets = _call(api, "GET", f"/apis/apps/v1/namespaces/{quote(ns, safe='')}/replicasets",
                 query={"labelSelector": selector}).get("items") or []
    revision = "deployment.kubernetes.io/revision"
    uid = deployment["metadata"]["uid"]
    owned = sorted(((int((rs["metadata"].get("annotations") or {}).get(revision, 0)), rs)
                    for rs in sets
                    if any(o.get("uid") == uid
                           for o in rs["metadata"].get("ownerReferences") or [])),
                   key=lambda pair: pair[0])
    if len(owned) < 2 and not to_revision:
        raise ChangeGateError(f"deployment/{name} has no previous revision to roll back to")
    wanted = [rs for rev, rs in owned if rev == to_revision] if to_revision else [owned[-2][1]]
    if not wanted:
        raise ChangeGateError(f"deployment/{name} has no revision {to_revision}")
    template = wanted[0]["spec"]["template"]
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
