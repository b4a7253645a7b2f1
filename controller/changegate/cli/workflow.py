"""`changegate request`, `approve`, `apply` (and, from workflow_view, `preflight`, `list`,
`status`): the safe path made the easy path. A denied `kubectl apply` names the next
command; these do the rest.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from changegate.cli.workflow_approve import approve
from changegate.cli.workflow_common import Session, kube_options, load_signing_key
from changegate.cli.workflow_view import list_, preflight, progress, status
from changegate.core.errors import ChangeGateError
from changegate.core.policy import parse_duration
from changegate.core.statement import Statement
from changegate.workflow.approvals import (
    TERMINAL,
    Live,
    Standing,
    check_produces,
    get_approval,
    live_state,
    planned_write,
    standing,
    statement_of,
)
from changegate.workflow.request import (
    Change,
    approval_bodies,
    create_approvals,
    place,
    plan_changes,
    plan_prune,
    plan_restart,
    read_documents,
    write_approval_files,
)
from changegate.workflow.show import table
from changegate.workflow.site import load_trust
from changegate.workflow.writes import (
    AS_RETURNED,
    CLIENT_SIDE,
    RESTART,
    SERVER_SIDE,
    denials,
)

ASSISTANCE = ("none", "ai")

__all__ = ["apply_", "approve", "list_", "preflight", "request", "status"]


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def mode_of(server_side: bool, as_returned: bool) -> str:
    if server_side and as_returned:
        raise click.UsageError("--server-side and --as-returned exclude each other")
    return SERVER_SIDE if server_side else AS_RETURNED if as_returned else CLIENT_SIDE


def write_options(func: Any) -> Any:
    """How the requester's tool writes: shared by request and preflight."""
    func = click.option("--as-returned", is_flag=True,
                        help="The files already are a server-side dry-run's output.")(func)
    func = click.option("--force-conflicts", is_flag=True,
                        help="With --server-side: take fields other managers own.")(func)
    func = click.option("--field-manager", default="kubectl", show_default=True,
                        help="With --server-side: the field manager the tool uses.")(func)
    func = click.option("--server-side", is_flag=True,
                        help="The tool writes by server-side apply (kubectl apply "
                             "--server-side, Argo CD ServerSideApply, Flux).")(func)
    return func


@click.command()
@click.option("-f", "--filename", "files", multiple=True,
              type=click.Path(exists=True, allow_dash=True),
              help="Manifests: files or directories (a Helm or kustomize render), - for "
                   "standard input; repeatable.")
@click.option("--record", required=True, help="Change record id, e.g. CHG-1234.")
@click.option("--url", help="Link to the change record.")
@click.option("--expires", "lifetime", default="4h", show_default=True, callback=_duration,
              help="How long the approval stays valid (at most maxApprovalLifetime).")
@click.option("--canary", is_flag=True, help="Roll Deployments out through a canary (SPEC §7).")
@click.option("--canary-replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--bake", "bake", default="5m", show_default=True, callback=_duration,
              help="With --canary: how long the canary must stay healthy.")
@write_options
@click.option("--prune", is_flag=True, help="Also request the DELETEs `kubectl apply --prune "
                                            "-l SELECTOR` would make.")
@click.option("-l", "--selector", help="Label selector for --prune.")
@click.option("--restart", "restart_target", metavar="deployment/NAME",
              help="Request a restart of the live Deployment at a fixed time.")
@click.option("--assisted", type=click.Choice(ASSISTANCE),
              help="Declare whether the change was written with AI assistance (signed; an ai "
                   "change needs a senior approver). Asked for when the policy requires it.")
@click.option("--to-dir", "to_dir", type=click.Path(file_okay=False),
              help="GitOps: write the ChangeApprovals as files here (signed with --key as "
                   "requester) instead of creating them; a trusted creator creates them.")
@click.option("--key", "key_path", envvar="CHANGEGATE_KEY", type=click.Path(dir_okay=False),
              help="With --to-dir: your key (a `role: requester` or your approver key).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the approvals created, for scripts.")
@kube_options
def request(session: Session, files: tuple[str, ...], record: str, url: str | None,
            lifetime: int, canary: bool, canary_replicas: int, bake: int, server_side: bool,
            field_manager: str, force_conflicts: bool, as_returned: bool, prune: bool,
            selector: str | None, restart_target: str | None, assisted: str | None,
            to_dir: str | None, key_path: str | None, output: str) -> None:
    """Request approval for the changes in FILES (or a restart), under one change record."""
    mode = mode_of(server_side, as_returned)
    if bool(files) == bool(restart_target):
        raise click.UsageError("give -f FILE... or --restart deployment/NAME (one of them)")
    if prune and not selector:
        raise click.UsageError("--prune needs -l/--selector, like kubectl apply --prune")
    if to_dir and not key_path:
        raise click.UsageError("--to-dir needs --key: a trusted creator may create the files "
                               "only with the requester's signature")
    key = load_signing_key(key_path) if to_dir and key_path else None
    api, site = session.api, session.site
    if lifetime > site.max_lifetime:
        raise ChangeGateError(f"--expires {timedelta(seconds=lifetime)} is over the cluster's "
                              f"maxApprovalLifetime {timedelta(seconds=site.max_lifetime)}")
    assisted = assisted or ask_assistance(site.require_assistance)
    user, now = api.whoami()
    if restart_target:
        plan = plan_restart(api, site, session.namespace, restart_target, now)
        mode = RESTART
    else:
        docs = read_documents(files)
        for doc in docs:
            place(doc, session.namespace, session.explicit_namespace)
        plan = plan_changes(api, site, progress(docs, "dry-running"), mode=mode,
                            field_manager=field_manager, force=force_conflicts)
        if prune and selector:
            namespaces = {str(d["metadata"]["namespace"]) for d in docs} or {session.namespace}
            plan_prune(api, site, plan, docs, namespaces, selector)
    as_json = output == "json"
    for label in plan.not_gated:
        click.echo(f"not gated: {label}", err=as_json)
    for label in plan.unchanged:
        click.echo(f"unchanged: {label}", err=as_json)
    if not plan.changes:
        click.echo("nothing to request: no gated object changes", err=as_json)
        if as_json:
            click.echo(json.dumps(_request_json(record, user, site.cluster, None, assisted,
                                                plan.not_gated, plan.unchanged, []), indent=2))
        return
    rollout: dict[str, Any] = {"strategy": "direct"}
    if canary:
        rollout = {"strategy": "canary",
                   "canary": {"replicas": canary_replicas, "bakeSeconds": bake}}
    bodies = approval_bodies(site, plan, record=record, url=url, user=user, now=now,
                             lifetime=timedelta(seconds=lifetime), rollout=rollout, mode=mode,
                             field_manager=field_manager, assistance=assisted)
    if to_dir and key is not None:
        written = write_approval_files(bodies, Path(to_dir), key)
        click.echo(f"wrote {len(written)} ChangeApproval file(s) requested by {user} under "
                   f"{record}, signed as requester (nothing created in the cluster):")
        for path, change in written:
            click.echo(f"  {path}  {change.operation} {change.namespace}/{change.target}")
        click.echo(f"next: {site.required} approvers other than {user} sign each file "
                   "offline (changegate approve -f FILE --key <KEY>), then merge; the GitOps "
                   "controller creates them before it syncs the objects")
        return
    created = create_approvals(api, bodies)
    expires = (now + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if as_json:
        click.echo(json.dumps(_request_json(record, user, site.cluster, expires, assisted,
                                            plan.not_gated, plan.unchanged, created),
                              indent=2))
        return
    declared = f", assistance {assisted}" if assisted else ""
    click.echo(f"requested by {user} under {record} for cluster {site.cluster or chr(34) * 2}, "
               f"valid until {expires}{declared}:")
    rows = [[f"changeapproval/{name}", change.operation, change.target,
             f"{change.from_digest[:19]} -> {change.to_digest[:19]}"] for name, change in created]
    click.echo(textwrap.indent(table(["APPROVAL", "OP", "TARGET", "DIGESTS"], rows), "  "),
               nl=False)
    senior = " (one of them senior: the change is AI-assisted)" if assisted == "ai" else ""
    click.echo(f"next: {site.required} approvers other than {user}{senior} run:")
    for ns in sorted({c.namespace for _, c in created}):
        click.echo(f"  changegate approve --record {record} -n {ns} --key <KEY>")
    click.echo("then apply: " + "; ".join(
        f"changegate apply {n} -n {c.namespace}" for n, c in created[:3])
        + (" ..." if len(created) > 3 else "")
        + (" (or your usual kubectl apply / helm upgrade)" if mode != RESTART else ""))


def _request_json(record: str, user: str, cluster: str, expires: str | None,
                  assisted: str | None, not_gated: list[str], unchanged: list[str],
                  created: list[tuple[str, Change]]) -> dict[str, Any]:
    return {"record": record, "requestedBy": user, "cluster": cluster, "expiresAt": expires,
            "assistance": assisted, "notGated": not_gated, "unchanged": unchanged,
            "approvals": [{"name": name, "namespace": c.namespace, "operation": c.operation,
                           "target": {"apiVersion": c.api_version, "kind": c.kind,
                                      "namespace": c.namespace, "name": c.name},
                           "fromDigest": c.from_digest, "toDigest": c.to_digest}
                          for name, c in created]}


def interactive() -> bool:
    return sys.stdin.isatty()


def ask_assistance(required: bool) -> str | None:
    """SPEC §6a: where the policy requires a declaration, ask on a terminal; elsewhere (CI,
    a pipe) refuse rather than guess, so nobody declares "none" by accident."""
    if not required:
        return None
    if not interactive():
        raise ChangeGateError("the cluster's policy requires a declaration of AI assistance "
                              "(requireAssistanceDeclaration): add --assisted none or "
                              "--assisted ai")
    answer: str = click.prompt("Was this change written with AI assistance? (none | ai)",
                               type=click.Choice(ASSISTANCE), err=True)
    return answer


@click.command("apply")
@click.argument("name")
@click.option("--dry-run", "dry_run_only", is_flag=True,
              help="Check everything and dry-run the write, but do not write.")
@click.option("--wait", is_flag=True,
              help="If it is not ready yet (approvals missing, or the webhook has not yet "
                   "seen the last signature), wait until it is, then apply. Problems that "
                   "waiting cannot fix (expired, the live object changed) fail at once.")
@click.option("--timeout", default="30s", show_default=True, callback=_duration,
              help="With --wait: give up after this long (like kubectl wait), e.g. 10m.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="With --wait: seconds between checks.")
@kube_options
def apply_(session: Session, name: str, dry_run_only: bool, wait: bool, timeout: int,
           interval: float) -> None:
    """Apply an approved ChangeApproval's manifest exactly as signed."""
    api, ns = session.api, session.namespace
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        ready = _readiness(session, name)
        if ready.blocked is None:
            break
        if not wait or ready.final:
            raise ChangeGateError(ready.blocked)
        if time.monotonic() >= deadline:
            raise ChangeGateError(f"timed out after {timedelta(seconds=timeout)} waiting: "
                                  f"{ready.blocked}")
        if ready.blocked != said:  # each new reason once, not every poll
            click.echo(f"waiting: {ready.blocked}", err=True)
            said = ready.blocked
        time.sleep(interval)
    obj, st, state, live = ready.obj, ready.statement, ready.state, ready.live
    assert live is not None  # read whenever nothing blocks
    p = st.predicate
    target = f"{p.target.kind.lower()} {ns}/{p.target.name}"
    if dry_run_only:
        click.echo(f"{target}: dry-run ok, would produce {p.toDigest} (nothing written)")
        return
    write = planned_write(obj, st, live)
    answer = write.send(api, dry_run=False)
    for warning in answer.warnings:
        click.echo(f"Warning: {warning}", err=True)
    past = {"create": "created", "patch": "configured", "replace": "replaced",
            "delete": "deleted", "apply": "serverside-applied"}[write.verb]
    click.echo(f"{target} {past} ({p.operation} {p.fromDigest[:19]} -> {p.toDigest[:19]}) "
               f"under {p.changeRecord.id}, approved by {', '.join(state.approvers) or '?'}")


@dataclass
class Readiness:
    obj: dict[str, Any]
    statement: Statement
    state: Standing
    live: Live | None = None
    blocked: str | None = None  # why it cannot be applied now; None: ready
    final: bool = False  # waiting cannot change that


def _readiness(session: Session, name: str) -> Readiness:
    """Everything `apply` checks before it writes, read afresh."""
    api, site, ns = session.api, session.site, session.namespace
    obj = get_approval(api, ns, name)
    st = statement_of(obj)
    user, now = api.whoami()
    trust, why = load_trust(api, session.controller_namespace)
    state = standing(api, site, obj, st, trust, now, applier=user)
    ready = Readiness(obj, st, state)
    if state.missing:
        source = "" if trust is not None else f" (trust store: {why}; judged by status)"
        ready.blocked = f"{name} is not ready to apply{source}: " + "; ".join(state.missing)
        # Signatures still to come can arrive; a deadline, a used approval or the applier's
        # own signature cannot change.
        ready.final = (now >= st.expires_at or user in state.approvers
                       or (obj.get("status") or {}).get("phase") in TERMINAL)
        return ready
    ready.live = live_state(api, site, st)
    problems, warnings = check_produces(api, site, obj, st, ready.live)
    if problems:
        ready.blocked, ready.final = f"{name} cannot be applied: " + "; ".join(problems), True
        return ready
    denied = denials(warnings)
    if denied:
        # Often the webhook's watch has not yet seen the last signature: waiting helps.
        ready.blocked = f"the webhook would refuse {name}: " + " | ".join(denied)
    return ready


_ = (request, approve, apply_, preflight, list_, status)
