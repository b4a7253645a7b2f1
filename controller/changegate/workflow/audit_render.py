"""The AuditReport as people read it: a terminal table, CSV for a spreadsheet, and one
self-contained HTML page (inline CSS and SVG, no script, no network) for an owner's review.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from changegate.workflow.audit import ADMITTED_BY, per_day
from changegate.workflow.show import table

COLORS = {"approval": "#2e7d32", "break-glass": "#c62828", "exempt": "#6d6d6d",
          "unexplained": "#ef6c00"}
CSV_COLUMNS = ("time", "namespace", "kind", "name", "operation", "fromDigest", "toDigest",
               "changeRecord", "requestedBy", "approvers", "assistance", "admittedBy",
               "approval")


def approvers_text(approvers: Sequence[Mapping[str, Any]]) -> str:
    """``bob, erin*`` (* marks a senior approver)."""
    return ", ".join(f"{a['name']}{'*' if a['senior'] else ''}" for a in approvers) or "-"


def _short(digest: str) -> str:
    return digest[:19] if digest.startswith("sha256:") else digest


def render_table(report: Mapping[str, Any]) -> str:
    out = [f"Changes {report['from']} .. {report['to']}: {len(report['changes'])}"
           " (* senior approver)\n"]
    if report["changes"]:
        out.append(table(
            ["TIME", "NAMESPACE", "OBJECT", "OP", "RECORD", "REQUESTED-BY", "APPROVERS",
             "AI", "ADMITTED-BY"],
            [[c["time"], c["namespace"], f"{c['kind'].lower()}/{c['name']}", c["operation"],
              c["changeRecord"] or "-", c["requestedBy"] or "-",
              approvers_text(c["approvers"]), c["assistance"] or "-", c["admittedBy"]]
             for c in report["changes"]]))
    owed = report["reviewsOwed"]
    out.append(f"\nReviews owed: {len(owed)} "
               f"({sum(1 for o in owed if o['overdue'])} overdue)\n")
    if owed:
        out.append(table(["SINCE", "NAMESPACE", "OBJECT", "REASON", "DEADLINE", "OVERDUE",
                          "APPROVAL"],
                         [[o["time"], o["namespace"], f"{o['kind'].lower()}/{o['name']}",
                           o["reason"], o["deadline"], "yes" if o["overdue"] else "no",
                           o["approval"]] for o in owed]))
    expired = report["expiredUnused"]
    out.append(f"\nApprovals expired unused: {len(expired)}\n")
    if expired:
        out.append(table(["EXPIRED", "NAMESPACE", "OBJECT", "RECORD", "REQUESTED-BY",
                          "APPROVERS", "APPROVAL"],
                         [[e["time"], e["namespace"], f"{e['kind'].lower()}/{e['name']}",
                           e["changeRecord"] or "-", e["requestedBy"] or "-",
                           approvers_text(e["approvers"]), e["approval"]] for e in expired]))
    counts = report["counts"]
    out.append("\nPer namespace:\n")
    if counts:
        out.append(table(["NAMESPACE", "CHANGES", *[h.upper() for h in ADMITTED_BY], "AI",
                          "REVIEWS-OWED", "OVERDUE", "EXPIRED-UNUSED"],
                         [[ns, *map(str, (c["changes"], *[c[h] for h in ADMITTED_BY],
                                          c["aiAssisted"], c["reviewsOwed"],
                                          c["reviewsOverdue"], c["expiredUnused"]))]
                          for ns, c in counts.items()]))
    else:
        out.append("  (nothing in this period)\n")
    return "".join(out)


def render_csv(report: Mapping[str, Any]) -> str:
    """The changes, one row each (approvers as ``bob;erin*``): the part a spreadsheet sums."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in report["changes"]:
        row = dict(c, approvers=approvers_text(c["approvers"]).replace(", ", ";"),
                   assistance=c["assistance"] or "")
        writer.writerow([row[k] for k in CSV_COLUMNS])
    return buffer.getvalue()


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.muted{color:#666}table{border-collapse:collapse;margin:.3em 0 1em;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right}td:first-child{white-space:nowrap}code{font-size:12px}
.tag{display:inline-block;padding:0 .45em;border-radius:3px;color:#fff;font-size:12px}
.senior{font-weight:600}.overdue{color:#c62828;font-weight:600}
.summary span{display:inline-block;margin-right:1.5em}
.legend span{margin-right:1em}.legend i{display:inline-block;width:.8em;height:.8em;
margin-right:.3em;vertical-align:middle}
"""


def _tag(how: str) -> str:
    return f'<span class="tag" style="background:{COLORS[how]}">{escape(how)}</span>'


def _approvers_html(approvers: Sequence[Mapping[str, Any]]) -> str:
    if not approvers:
        return '<span class="muted">none</span>'
    return ", ".join(
        f'<span class="senior">{escape(a["name"])} (senior)</span>' if a["senior"]
        else escape(a["name"]) for a in approvers)


def chart_svg(report: Mapping[str, Any]) -> str:
    """Stacked bars: changes per day by how they got in. Plain SVG, sized to the period."""
    days = per_day(report)
    width, height, left, bottom, top = 760, 220, 36, 40, 12
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max([sum(c.values()) for _, c in days] + [1])
    bar = plot_w / max(len(days), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="changes per day">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
             'stroke="#999"/>']
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#666">{tick}</text>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                     'stroke="#eee"/>')
    label_every = max(1, len(days) // 10)
    for index, (day, counts) in enumerate(days):
        x = left + index * bar
        y = top + plot_h
        for how in ADMITTED_BY:
            n = counts[how]
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" '
                         f'height="{h:.1f}" fill="{COLORS[how]}"><title>{day}: {n} by '
                         f'{how}</title></rect>')
        if index % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" font-size="10" '
                         f'text-anchor="middle" fill="#666">{day[5:]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    changes, owed, expired = report["changes"], report["reviewsOwed"], report["expiredUnused"]
    totals = {how: sum(1 for c in changes if c["admittedBy"] == how) for how in ADMITTED_BY}
    overdue = sum(1 for o in owed if o["overdue"])
    rows = "".join(
        f"<tr><td>{escape(c['time'])}</td><td>{escape(c['namespace'])}</td>"
        f"<td>{escape(c['kind'])}/{escape(c['name'])}</td><td>{escape(c['operation'])}</td>"
        f"<td>{escape(c['changeRecord'] or '-')}</td><td>{escape(c['requestedBy'] or '-')}</td>"
        f"<td>{_approvers_html(c['approvers'])}</td><td>{escape(c['assistance'] or '-')}</td>"
        f"<td>{_tag(c['admittedBy'])}</td>"
        f"<td><code>{escape(_short(c['fromDigest']))} &#8594; "
        f"{escape(_short(c['toDigest']))}</code></td></tr>" for c in changes)
    owed_rows = "".join(
        f"<tr><td>{escape(o['time'])}</td><td>{escape(o['namespace'])}</td>"
        f"<td>{escape(o['kind'])}/{escape(o['name'])}</td><td>{_tag(o['reason'])}</td>"
        f"<td>{escape(o['detail'])}</td><td>{escape(o['deadline'])}</td>"
        f"<td>{'<span class=overdue>overdue</span>' if o['overdue'] else 'pending'}</td></tr>"
        for o in owed)
    expired_rows = "".join(
        f"<tr><td>{escape(e['time'])}</td><td>{escape(e['namespace'])}</td>"
        f"<td>{escape(e['kind'])}/{escape(e['name'])}</td><td>{escape(e['changeRecord'])}</td>"
        f"<td>{escape(e['requestedBy'])}</td><td>{_approvers_html(e['approvers'])}</td>"
        f"<td>{escape(e['approval'])}</td></tr>" for e in expired)
    count_rows = "".join(
        f"<tr><td>{escape(ns)}</td><td class=n>{c['changes']}</td>"
        + "".join(f"<td class=n>{c[how]}</td>" for how in ADMITTED_BY)
        + f"<td class=n>{c['aiAssisted']}</td><td class=n>{c['reviewsOwed']}</td>"
        f"<td class=n>{c['reviewsOverdue']}</td><td class=n>{c['expiredUnused']}</td></tr>"
        for ns, c in report["counts"].items())
    legend = "".join(f'<span><i style="background:{COLORS[h]}"></i>{h}</span>'
                     for h in ADMITTED_BY)
    none = '<p class="muted">None in this period.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>changegate audit {escape(report['from'])} to {escape(report['to'])}</title>
<style>{CSS}</style></head><body>
<h1>Tier-1 changes</h1>
<p class="muted">{escape(report['from'])} to {escape(report['to'])} &middot; from the
ChangeApprovals the changegate operator keeps</p>
<p class="summary"><span><b>{len(changes)}</b> changes</span>
{''.join(f'<span><b>{n}</b> by {escape(h)}</span>' for h, n in totals.items())}
<span><b>{len(owed)}</b> reviews owed ({overdue} overdue)</span>
<span><b>{len(expired)}</b> approvals expired unused</span></p>
<h2>Changes per day, by how they got in</h2>
<p class="legend">{legend}</p>
{chart_svg(report)}
<h2>Per namespace</h2>
{f'''<table><tr><th>Namespace</th><th>Changes</th>{''.join(f"<th>{h}</th>" for h in ADMITTED_BY)}
<th>AI-assisted</th><th>Reviews owed</th><th>Overdue</th><th>Expired unused</th></tr>
{count_rows}</table>''' if count_rows else none}
<h2>Changes</h2>
{f'''<table><tr><th>Time</th><th>Namespace</th><th>Object</th><th>Op</th><th>Record</th>
<th>Requested by</th><th>Approvers</th><th>Assistance</th><th>Admitted by</th>
<th>Digests</th></tr>{rows}</table>''' if rows else none}
<h2>Reviews owed</h2>
{f'''<table><tr><th>Since</th><th>Namespace</th><th>Object</th><th>Reason</th><th>Detail</th>
<th>Deadline</th><th>State</th></tr>{owed_rows}</table>''' if owed_rows else none}
<h2>Approvals expired unused</h2>
{f'''<table><tr><th>Expired</th><th>Namespace</th><th>Object</th><th>Record</th>
<th>Requested by</th><th>Approvers</th><th>Approval</th></tr>{expired_rows}</table>'''
 if expired_rows else none}
</body></html>
"""


__all__ = ["render_csv", "render_html", "render_table"]
