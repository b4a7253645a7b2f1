"""`changegate preflight`, `list` and `status`: what would happen, what is waiting, and why."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
import yaml

from changegate.cli.workflow_common import Session, kube_options
from changegate.core.digest import digest
from changegate.core.errors import ChangeGateError
from changegate.core.statement import PLURALS, parse_time
from changegate.kube import ApiError, object_path
from changegate.workflow.approvals import (
    TERMINAL,
    check_produces,
    get_approval,
    list_approvals,
    list_approvals_at,
    live_state,
    standing,
    statement_of,
)
from changegate.workflow.request import place, read_documents
from changegate.workflow.show import age, assistance_label, expires, table
from changegate.workflow.site import load_trust
from changegate.workflow.writes import (
    CLIENT_SIDE,
    SERVER_SIDE,
    config_write,
    denials,
    dry_run,
    identity,
    meta,
)

OUTPUT = click.Choice(["table", "json", "yaml"])


def _dump(value: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(value, indent=2))
    else:
        click.echo(yaml.safe_dump(value, sort_keys=False), nl=False)


@click.command()
@click.option("-f", "--filename", "files", multiple=True,
              type=click.Path(exists=True, allow_dash=True),
              help="Manifests to check (files or directories, - for standard input); "
                   "repeatable.")
@click.option("--record", help="Check every ChangeApproval of this change record instead.")
@click.option("--server-side", is_flag=True, help="The tool writes by server-side apply.")
@click.option("--field-manager", default="kubectl", show_default=True)
@click.option("--force-conflicts", is_flag=True)
@kube_options
def preflight(session: Session, files: tuple[str, ...], record: str | None, server_side: bool,
              field_manager: str, force_conflicts: bool) -> None:
    """Exit 1 unless every gated change would be admitted now (server-side dry-runs)."""
    if bool(files) == bool(record):
        raise click.UsageError("give -f FILE... or --record ID")
    verdicts = (_preflight_files(session, files, SERVER_SIDE if server_side else CLIENT_SIDE,
                                 field_manager, force_conflicts)
                if files else _preflight_record(session, str(record)))
    rows = [[v, target, why] for v, target, why in verdicts]
    click.echo(table(["VERDICT", "TARGET", "DETAIL"], rows), nl=False)
    denied = sum(1 for v, _, _ in verdicts if v == "DENY")
    click.echo(f"{len(verdicts) - denied} admitted, {denied} denied")
    if denied:
        raise SystemExit(1)


def _preflight_files(session: Session, files: tuple[str, ...], mode: str, manager: str,
                     force: bool) -> list[tuple[str, str, str]]:
    api, site = session.api, session.site
    out: list[tuple[str, str, str]] = []
    for doc in read_documents(files):
        place(doc, session.namespace, session.explicit_namespace)
        api_version, kind, ns, name = identity(doc)
        if (api_version, kind) not in PLURALS:
            continue
        target = f"{kind.lower()}/{name} -n {ns}"
        live = api.get(object_path(api_version, kind, ns, name))
        try:
            result, warnings = dry_run(api, config_write(doc, live, mode, field_manager=manager,
                                                         force=force))
        except ApiError as exc:
            out.append(("DENY", target, str(exc)))
            continue
        auto = kind == "Deployment" and site.autoscaled(api, ns, name)
        before, after = (digest(live, site.rules, autoscaled=auto),
                         digest(result, site.rules, autoscaled=auto))
        denied = denials(warnings)
        if denied:
            out.append(("DENY", target, " ".join(denied)))
        elif before == after:
            out.append(("ALLOW", target, "no change"))
        else:
            out.append(("ALLOW", target, f"{before[:19]} -> {after[:19]}"))
    return out


def _preflight_record(session: Session, record: str) -> list[tuple[str, str, str]]:
    api, site = session.api, session.site
    out: list[tuple[str, str, str]] = []
    items = list_approvals(api, session.namespace, record)
    if not items:
        raise ChangeGateError(f"no ChangeApproval of record {record} in {session.namespace}")
    for obj in items:
        st = statement_of(obj)
        t = st.predicate.target
        target = f"{t.kind.lower()}/{t.name} ({meta(obj).get('name')})"
        live = live_state(api, site, st)
        if live.problems and live.digest == st.predicate.toDigest:
            out.append(("ALLOW", target, "already applied"))
            continue
        try:
            problems, warnings = check_produces(api, site, obj, st, live)
        except ApiError as exc:
            problems, warnings = [str(exc)], ()
        denied = problems + denials(warnings)
        out.append(("DENY", target, " ".join(denied)) if denied
                   else ("ALLOW", target, f"{st.predicate.operation} would be admitted"))
    return out


def _phase(obj: dict[str, Any], now: datetime) -> str:
    phase = str((obj.get("status") or {}).get("phase") or "")
    if phase:
        return phase
    try:
        if now >= parse_time(str((obj.get("spec") or {}).get("expiresAt"))):
            return "Expired"
    except ChangeGateError:
        pass
    return "-"


def _approvals_cell(obj: dict[str, Any], required: int) -> str:
    status = obj.get("status") or {}
    if "approvals" in status:
        return f"{status['approvals']}/{status.get('required') or required}"
    # No operator status yet: count signatures, which are not yet verified.
    return f"{len((obj.get('spec') or {}).get('signatures') or [])}?/{required}"


@click.command("list")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option("--pending", is_flag=True, help="Only approvals still in flight (not used, "
                                              "expired or finished).")
@click.option("--record", help="Only approvals of this change record.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@kube_options
def list_(session: Session, all_namespaces: bool, pending: bool, record: str | None,
          output: str) -> None:
    """List ChangeApprovals, like `kubectl get changeapprovals`."""
    api = session.api
    items, now = list_approvals_at(api, None if all_namespaces else session.namespace, record)
    if pending:
        items = [i for i in items if _phase(i, now) not in TERMINAL | {"Expired"}]
    if output != "table":
        _dump({"apiVersion": "v1", "kind": "List", "items": items}, output)
        return
    if not items:
        where = "any namespace" if all_namespaces else f"namespace {session.namespace}"
        click.echo(f"No ChangeApprovals found in {where}.", err=True)
        return
    required = session.site.required
    headers = ["NAME", "TARGET", "OP", "RECORD", "APPROVALS", "PHASE", "EXPIRES", "AGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for obj in items:
        spec, m = obj.get("spec") or {}, meta(obj)
        t = spec.get("target") or {}
        row = [str(m.get("name")), f"{str(t.get('kind', '')).lower()}/{t.get('name', '')}",
               str(spec.get("operation", "")), str((spec.get("changeRecord") or {}).get("id")),
               _approvals_cell(obj, required), _phase(obj, now),
               expires(spec.get("expiresAt"), now), age(m.get("creationTimestamp"), now)]
        if all_namespaces:
            row.insert(0, str(m.get("namespace")))
        rows.append(row)
    click.echo(table(headers, rows), nl=False)


@click.command()
@click.argument("name")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@kube_options
def status(session: Session, name: str, output: str) -> None:
    """Explain what a ChangeApproval still needs before its change can go."""
    api, site = session.api, session.site
    obj = get_approval(api, session.namespace, name)
    if output != "table":
        _dump(obj, output)
        return
    st = statement_of(obj)
    p = st.predicate
    _, now = api.whoami()
    trust, why = load_trust(api, session.controller_namespace)
    state = standing(api, site, obj, st, trust, now)
    live = live_state(api, site, st)
    lines = [
        f"Name:          {session.namespace}/{name}",
        f"Target:        {p.operation} {p.target.kind.lower()}/{p.target.name}",
        f"Record:        {p.changeRecord.id}" + (f" {p.changeRecord.url}" if p.changeRecord.url
                                                 else ""),
        f"Requested by:  {p.requestedBy} at {p.issuedAt}",
        f"Assistance:    {assistance_label(st)}",
        f"Expires:       {p.expiresAt} ({expires(p.expiresAt, now)})",
        f"Phase:         {_phase(obj, now)}",
        f"Approvals:     {len(state.approvers)}/{state.required} "
        f"({', '.join(state.approvers) or 'none'}; "
        + ("verified with the trust store)" if state.verified else f"per status: {why})"),
        f"Signatures:    {len((obj.get('spec') or {}).get('signatures') or [])}",
        f"From:          {p.fromDigest}",
        f"To:            {p.toDigest}",
        f"Live:          {live.digest}",
    ]
    click.echo("\n".join(lines))
    missing = list(state.missing) + live.problems
    if live.problems and live.digest == p.toDigest:
        missing = ["the live object is already at toDigest: applied"]
    if missing:
        click.echo("Missing before it can go:")
        for item in missing:
            click.echo(f"  - {item}")
    else:
        click.echo(f"Ready: run `changegate apply {name} -n {session.namespace}` "
                   "(as someone who did not approve it)")


__all__ = ["list_", "preflight", "status"]
