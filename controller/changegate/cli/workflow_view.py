"""`changegate preflight`, `list` and `status`: what would happen, what is waiting, and why."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TypeVar

import click
import yaml

from changegate.cli.canary import is_canary
from changegate.cli.canary import lines as canary_lines
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
PROGRESS_MIN = 5  # objects: below this the answer comes before a bar would help
T = TypeVar("T")


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
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@kube_options
def preflight(session: Session, files: tuple[str, ...], record: str | None, server_side: bool,
              field_manager: str, force_conflicts: bool, output: str) -> None:
    """Exit 1 unless every gated change would be admitted now (server-side dry-runs)."""
    if bool(files) == bool(record):
        raise click.UsageError("give -f FILE... or --record ID")
    verdicts = (_preflight_files(session, files, SERVER_SIDE if server_side else CLIENT_SIDE,
                                 field_manager, force_conflicts)
                if files else _preflight_record(session, str(record)))
    denied = sum(1 for v, _, _ in verdicts if v == "DENY")
    if output == "json":
        click.echo(json.dumps({
            "admitted": len(verdicts) - denied, "denied": denied,
            "results": [{"verdict": v, "target": target, "detail": why}
                        for v, target, why in verdicts]}, indent=2))
    else:
        rows = [[v, target, why] for v, target, why in verdicts]
        click.echo(table(["VERDICT", "TARGET", "DETAIL"], rows), nl=False)
        click.echo(f"{len(verdicts) - denied} admitted, {denied} denied")
    if denied:
        raise SystemExit(1)


def progress(items: list[T], label: str) -> Iterator[T]:
    """The items, with a progress bar on stderr when it is a terminal and there are enough
    of them to wait for (a Helm render's hundred objects are a hundred dry-runs); nothing
    otherwise, so pipes and CI logs stay clean."""
    stream = click.get_text_stream("stderr")
    if len(items) < PROGRESS_MIN or not stream.isatty():
        yield from items
        return
    with click.progressbar(items, label=label, file=stream) as bar:
        yield from bar


def _preflight_files(session: Session, files: tuple[str, ...], mode: str, manager: str,
                     force: bool) -> list[tuple[str, str, str]]:
    api, site = session.api, session.site
    out: list[tuple[str, str, str]] = []
    for doc in progress(read_documents(files), "dry-running"):
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
    for obj in progress(items, "checking"):
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


def _review(obj: dict[str, Any]) -> dict[str, Any]:
    """status.review of a review owed (SPEC §7a), {} for any other approval."""
    found = (obj.get("status") or {}).get("review")
    return found if isinstance(found, dict) else {}


def _owed_cell(obj: dict[str, Any], now: datetime) -> str:
    """For a review: since when it is owed, where other approvals show their expiry (a
    review's expiry means nothing: it admits nothing, and is signed whenever reviewed)."""
    review = _review(obj)
    since = review.get("owedSince")
    if (obj.get("status") or {}).get("phase") == "Reviewed":
        return "reviewed"
    return f"owed {age(since, now)}" if since else "owed"


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
@click.option("--owed", is_flag=True, help="Only reviews owed: break-glass and unexplained "
                                           "changes not yet reviewed.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@kube_options
def list_(session: Session, all_namespaces: bool, pending: bool, record: str | None,
          owed: bool, output: str) -> None:
    """List ChangeApprovals, like `kubectl get changeapprovals`; reviews owed show since
    when they are owed, and why."""
    api = session.api
    items, now = list_approvals_at(api, None if all_namespaces else session.namespace, record)
    if pending:
        items = [i for i in items if _phase(i, now) not in TERMINAL | {"Expired"}]
    if owed:
        items = [i for i in items if _phase(i, now) == "ReviewOwed"]
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
        review = _review(obj)
        phase = _phase(obj, now) + (f" ({review.get('reason')})" if review else "")
        row = [str(m.get("name")), f"{str(t.get('kind', '')).lower()}/{t.get('name', '')}",
               str(spec.get("operation", "")), str((spec.get("changeRecord") or {}).get("id")),
               _approvals_cell(obj, required), phase,
               _owed_cell(obj, now) if review else expires(spec.get("expiresAt"), now),
               age(m.get("creationTimestamp"), now)]
        if all_namespaces:
            row.insert(0, str(m.get("namespace")))
        rows.append(row)
    click.echo(table(headers, rows), nl=False)


@click.command()
@click.argument("name")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("-w", "--watch", is_flag=True,
              help="Print again whenever it changes, until it reaches a final phase "
                   "(Applied, Expired, ...) or Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="With --watch: seconds between reads.")
@kube_options
def status(session: Session, name: str, output: str, watch: bool, interval: float) -> None:
    """Explain what a ChangeApproval still needs before its change can go."""
    if not watch:
        text, _ = _status(session, name, output)
        click.echo(text, nl=False)
        return
    # Polling, not a watch: the answer also depends on the live object, the trust store and
    # the API server's clock (expiry), which no single watch covers.
    last = None
    while True:
        text, final = _status(session, name, output)
        if text != last:
            if last is not None and output == "table":
                click.echo("---")
            click.echo(text, nl=False)
            last = text
        if final:
            return
        time.sleep(interval)


def _status(session: Session, name: str, output: str) -> tuple[str, bool]:
    """What `status` prints, and whether the approval is in a final phase."""
    api, site = session.api, session.site
    obj = get_approval(api, session.namespace, name)
    _, now = api.whoami()
    phase = _phase(obj, now)
    final = phase in TERMINAL | {"Expired"}
    if output == "json":
        return json.dumps(obj, indent=2) + "\n", final
    if output == "yaml":
        return yaml.safe_dump(obj, sort_keys=False), final
    st = statement_of(obj)
    p = st.predicate
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
        f"Phase:         {phase}",
        f"Approvals:     {len(state.approvers)}/{state.required} "
        f"({', '.join(state.approvers) or 'none'}; "
        + ("verified with the trust store)" if state.verified else f"per status: {why})"),
        f"Signatures:    {len((obj.get('spec') or {}).get('signatures') or [])}",
        f"From:          {p.fromDigest}",
        f"To:            {p.toDigest}",
        f"Live:          {live.digest}",
    ]
    lines += canary_lines(obj)
    review = _review(obj)
    if review:
        return _review_status(obj, review, lines, state.approvers, state.required, now), final
    missing = list(state.missing) + live.problems
    if live.problems and live.digest == p.toDigest:
        missing = ["the live object is already at toDigest: applied"]
    if missing:
        lines.append("Missing before it can go:")
        lines.extend(f"  - {item}" for item in missing)
    elif is_canary(obj):
        lines.append("Ready: the operator promotes the canary once it stayed healthy for its "
                     "bake")
    else:
        lines.append(f"Ready: run `changegate apply {name} -n {session.namespace}` "
                     "(as someone who did not approve it)")
    return "\n".join(lines) + "\n", final


def _review_status(obj: dict[str, Any], review: dict[str, Any], lines: list[str],
                   approvers: tuple[str, ...] | list[str], required: int, now: datetime) -> str:
    """A review owed: why, since when, and who still has to sign. Its change is done, so
    nothing about applying it applies (Expires, Live, Ready are left out)."""
    name = meta(obj).get("name")
    keep = [line for line in lines if not line.startswith(("Expires:", "Live:"))]
    keep.insert(1, f"Review owed:   {review.get('reason')} change, "
                   f"{_owed_cell(obj, now)} (since {review.get('owedSince')})")
    keep.insert(2, f"Why:           {review.get('detail') or '-'}")
    if (obj.get("status") or {}).get("phase") == "Reviewed":
        keep.append(f"Reviewed by {', '.join(approvers)}.")
    else:
        need = max(0, required - len(approvers))
        keep.append(f"Owed: {need} more approver signature(s) to review it: "
                    f"changegate approve {name} -n {meta(obj).get('namespace')} "
                    "(it admits nothing: its change already happened)")
    return "\n".join(keep) + "\n"


__all__ = ["list_", "preflight", "progress", "status"]
