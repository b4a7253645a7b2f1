"""`changegate audit` (SPEC §10): the period's record of tier-1 changes for an owner's review."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import click

from changegate.cli.workflow_common import Session, kube_options
from changegate.core.errors import ChangeGateError
from changegate.core.policy import parse_duration
from changegate.workflow.audit import Period, build_report, parse_moment, read_approvals
from changegate.workflow.audit_render import render_csv, render_html, render_table
from changegate.workflow.site import load_trust

OUTPUTS = click.Choice(["table", "json", "csv", "html"])


def _progress(count: int) -> None:
    click.echo(f"\rreading ChangeApprovals: {count}", nl=False, err=True)


@click.command()
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("--since", default=None, metavar="DURATION",
              help="The period ending now: 30d, 7d, 12h (default 30d).")
@click.option("--from", "start", metavar="TIME", help="Start (YYYY-MM-DD or RFC 3339 UTC).")
@click.option("--to", "end", metavar="TIME", help="End, exclusive (default: now).")
@click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Write the report to this file instead of stdout.")
@kube_options
def audit(session: Session, all_namespaces: bool, since: str | None, start: str | None,
          end: str | None, output: str, out_file: str | None) -> None:
    """Every gated change of a period and how it got in (approval, break-glass, exempt,
    unexplained), reviews owed and overdue, approvals that expired unused, per namespace
    counts; from the ChangeApprovals the operator keeps (approvalRetention)."""
    if since is not None and (start is not None or end is not None):
        raise click.UsageError("give --since or --from/--to, not both")
    if end is not None and start is None:
        raise click.UsageError("--to needs --from")
    if all_namespaces and session.explicit_namespace:
        raise click.UsageError("give -n NAMESPACE or -A, not both")
    api = session.api
    namespace = None if all_namespaces else session.namespace
    show = sys.stderr.isatty()  # progress is for a person watching, never for a pipe
    items, now = read_approvals(api, namespace, progress=_progress if show else None)
    if show:
        click.echo("", err=True)
    if start is not None:
        period = Period(start=parse_moment(start), end=parse_moment(end) if end else now)
    else:
        try:
            seconds = parse_duration(since or "30d")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from exc
        period = Period(start=now - timedelta(seconds=seconds), end=now)
    if period.end <= period.start:
        raise ChangeGateError("the period is empty: --to must be after --from")
    trust, why = load_trust(api, session.controller_namespace)
    if trust is None:
        click.echo(f"note: {why}: senior approvers are not marked", err=True)
    report = build_report(items, period=period, now=now,
                          seniors=trust.seniors() if trust is not None else frozenset(),
                          review_deadline=session.site.review_deadline)
    if output == "json":
        text = json.dumps(report, indent=2) + "\n"
    elif output == "csv":
        text = render_csv(report)
    elif output == "html":
        text = render_html(report)
    else:
        text = render_table(report)
    if out_file:
        Path(out_file).write_text(text, encoding="utf-8")
        click.echo(f"wrote {out_file} ({len(report['changes'])} changes)", err=True)
    else:
        click.echo(text, nl=False)


