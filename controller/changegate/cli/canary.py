"""`changegate canary abort NAME`, and the canary lines of `changegate status` (SPEC §7)."""

from __future__ import annotations

from typing import Any

import click

from changegate.cli.workflow_common import Session, kube_options
from changegate.core.canary import ABORT_ANNOTATION, FAILED, PROMOTED, RUNNING, canary_name
from changegate.core.errors import ChangeGateError
from changegate.kube import MERGE_PATCH, approvals_path
from changegate.workflow.approvals import get_approval

MAX_REASON = 256


def is_canary(obj: dict[str, Any]) -> bool:
    return ((obj.get("spec") or {}).get("rollout") or {}).get("strategy") == "canary"


def lines(obj: dict[str, Any]) -> list[str]:
    """What `changegate status` says about a canary approval's run."""
    if not is_canary(obj):
        return []
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    rollout = (spec.get("rollout") or {}).get("canary") or {}
    progress = status.get("canary") or {}
    target = str((spec.get("target") or {}).get("name", ""))
    out = [f"Canary:        {progress.get('name') or canary_name(target)}, "
           f"{progress.get('replicas') or rollout.get('replicas', 1)} replica(s), bake "
           f"{rollout.get('bakeSeconds', 0)}s"]
    for key, label in (("startedAt", "started"), ("healthySince", "healthy since"),
                       ("promotedAt", "promoted"), ("endedAt", "ended"), ("result", "result")):
        if progress.get(key):
            out.append(f"  {label + ':':15}{progress[key]}")
    cond = next((c for c in status.get("conditions") or []
                 if isinstance(c, dict) and c.get("type") == "Canary"), None)
    if cond:
        out.append(f"  {'now:':15}{cond.get('reason')}: {cond.get('message')}")
    abort = ((obj.get("metadata") or {}).get("annotations") or {}).get(ABORT_ANNOTATION)
    if abort:
        out.append(f"  {'abort asked:':15}{abort}")
    return out


@click.group()
def canary() -> None:
    """Canary runs (SPEC §7): the operator runs them; anyone who may write the
    ChangeApproval can stop one."""


@canary.command()
@click.argument("name")
@click.option("--reason", default="", help="Why (shown in the approval's status and Event).")
@kube_options
def abort(session: Session, name: str, reason: str) -> None:
    """Abort the canary of ChangeApproval NAME: the operator deletes the canary and sets
    CanaryFailed. Always safe; a run that already ended is left as it is."""
    api = session.api
    obj = get_approval(api, session.namespace, name)
    if not is_canary(obj):
        raise ChangeGateError(f"ChangeApproval {session.namespace}/{name} has no canary rollout")
    phase = str((obj.get("status") or {}).get("phase") or "")
    if phase in (FAILED, "Applied", "Expired", "Rejected"):
        raise ChangeGateError(f"ChangeApproval {session.namespace}/{name} is {phase}: its "
                              "canary run has ended")
    user, now = api.whoami()
    value = f"{user} at {now.strftime('%Y-%m-%dT%H:%M:%SZ')}" + (f": {reason}" if reason
                                                                  else "")
    # The annotation, not the spec (immutable after creation): the webhook admits a
    # metadata-only update of a ChangeApproval, and the operator acts on it.
    api.call("PATCH", approvals_path(session.namespace, name), content_type=MERGE_PATCH,
             body={"metadata": {"annotations": {ABORT_ANNOTATION: value[:MAX_REASON]}}})
    when = {RUNNING: "the operator deletes the canary and sets CanaryFailed",
            PROMOTED: "the promotion is being written; if it has not landed, the operator "
                      "stops it and sets CanaryFailed"}.get(
        phase, "no canary runs yet; the operator sets CanaryFailed, so this approval never "
               "starts one")
    click.echo(f"changeapproval/{name}: abort requested ({when}); follow it with "
               f"changegate status {name} -n {session.namespace}")


__all__ = ["abort", "canary", "lines"]
