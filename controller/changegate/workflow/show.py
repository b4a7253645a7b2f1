"""What a person reads: the diff a reviewer signs, tables like kubectl's, ages."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import click
import yaml

from changegate.core.digest import ViewRules, view
from changegate.core.errors import ChangeGateError
from changegate.core.statement import Statement, parse_time


def _yaml(obj: Mapping[str, Any] | None, rules: ViewRules, autoscaled: bool) -> list[str]:
    if obj is None:
        return []
    # The SPEC §3 view is what the digest (and so the signature) covers: show exactly that,
    # so nothing a reviewer reads is outside what they sign, and nothing they sign is hidden.
    text = yaml.safe_dump(view(obj, rules, autoscaled=autoscaled), sort_keys=True,
                          default_flow_style=False, allow_unicode=True)
    return text.splitlines(keepends=True)


def unified_diff(live: Mapping[str, Any] | None, proposed: Mapping[str, Any] | None,
                 label: str, rules: ViewRules, *, autoscaled: bool = False,
                 color: bool = False) -> str:
    lines = list(difflib.unified_diff(
        _yaml(live, rules, autoscaled), _yaml(proposed, rules, autoscaled),
        fromfile=f"live/{label}" if live is not None else "/dev/null",
        tofile=f"proposed/{label}" if proposed is not None else "/dev/null", n=3))
    if not lines:
        return "(no difference in what the digest covers)\n"
    out = []
    for line in lines:
        if not line.endswith("\n"):
            line += "\n"
        if color and line.startswith(("+++", "---")):
            line = click.style(line, bold=True)
        elif color and line.startswith("+"):
            line = click.style(line, fg="green")
        elif color and line.startswith("-"):
            line = click.style(line, fg="red")
        elif color and line.startswith("@@"):
            line = click.style(line, fg="cyan")
        out.append(line)
    return "".join(out)


def describe_statement(st: Statement) -> str:
    p = st.predicate
    t = p.target
    record = p.changeRecord.id + (f" ({p.changeRecord.url})" if p.changeRecord.url else "")
    rollout: str = p.rollout.strategy
    if p.rollout.canary is not None:
        rollout += (f" ({p.rollout.canary.replicas} replica(s), bake "
                    f"{p.rollout.canary.bakeSeconds}s)")
    rows = [
        ("Change record", record),
        ("Operation", f"{p.operation} {t.kind} {t.namespace}/{t.name}"),
        ("Target uid", t.uid),
        ("Cluster", p.cluster or '""'),
        ("From", p.fromDigest),
        ("To", p.toDigest),
        ("Requested by", p.requestedBy),
        ("Issued", p.issuedAt),
        ("Expires", p.expiresAt),
        ("Rollout", rollout),
        ("Assistance", assistance_label(st)),
        ("Nonce", p.nonce),
    ]
    return "".join(f"  {k + ':':<15}{v}\n" for k, v in rows)


def assistance_label(st: Statement) -> str:
    """What the requester declared (SPEC §6a), as a reviewer should read it."""
    declared = st.predicate.assistance
    if declared == "ai":
        return "ai (AI-assisted: needs a senior signature)"
    return declared or "not declared"


def human_duration(seconds: float) -> str:
    """kubectl's short form: 45s, 12m, 3h20m, 5d."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 8 * 3600:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        return human_duration((now - parse_time(timestamp)).total_seconds())
    except ChangeGateError:  # a malformed timestamp must not break a listing
        return "<unknown>"


def expires(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<none>"
    try:
        left = (parse_time(timestamp) - now).total_seconds()
    except ChangeGateError:
        return "<invalid>"
    return f"in {human_duration(left)}" if left > 0 else f"expired {human_duration(-left)} ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl's printer."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines) + "\n"
