"""ChangeApprovals on the API server: read them, judge them with the core, append signatures.

Judging here is advice for the person at the terminal; the webhook decides again at
admission, from the same core.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from changegate.core.approval import (
    decode_statement,
    manifest_digest,
    spec_mismatches,
    verify_approval,
)
from changegate.core.digest import digest
from changegate.core.errors import ChangeGateError
from changegate.core.policy import Policy
from changegate.core.senior import automation_users, senior_problem
from changegate.core.statement import Statement, parse_statement
from changegate.core.trust import TrustStore
from changegate.kube import JSON_PATCH, ApiError, Kube, approvals_path, object_path
from changegate.workflow.site import Site
from changegate.workflow.writes import (
    CLIENT_SIDE,
    KubectlApply,
    Write,
    delete_write,
    dry_run,
    manifest_write,
    meta,
)

WRITE_ANNOTATION = "changegate.io/write"
CONFLICT_RETRIES = 8  # two approvers at once need one retry; eight covers a crowd
TERMINAL = frozenset({"Applied", "Expired", "Rejected", "CanaryFailed", "Promoted", "Reviewed"})


def statement_of(obj: Mapping[str, Any]) -> Statement:
    """The statement the spec carries, checked against the spec's other fields."""
    spec = obj.get("spec") or {}
    m = meta(obj)
    name = f"{m.get('namespace')}/{m.get('name')}"
    try:
        st = parse_statement(decode_statement(spec))
    except ChangeGateError as exc:
        raise ChangeGateError(f"ChangeApproval {name}: {exc}") from exc
    wrong = spec_mismatches(spec, st, str(m.get("namespace", "")))
    if wrong:
        raise ChangeGateError(f"ChangeApproval {name}: its fields differ from its signed "
                              f"statement ({', '.join(wrong)}): do not sign or apply it")
    return st


def get_approval(api: Kube, namespace: str, name: str) -> dict[str, Any]:
    found = api.get(approvals_path(namespace, name))
    if found is None:
        raise ChangeGateError(f"ChangeApproval {namespace}/{name} not found")
    return found


def list_approvals(api: Kube, namespace: str | None, record: str | None = None
                   ) -> list[dict[str, Any]]:
    return list_approvals_at(api, namespace, record)[0]


def list_approvals_at(api: Kube, namespace: str | None, record: str | None = None
                      ) -> tuple[list[dict[str, Any]], datetime]:
    """The approvals, and the API server's clock when it listed them (ages and expiry are
    judged by the server's time, as the webhook judges them)."""
    answer = api.call("GET", approvals_path(namespace))
    items = (answer.body or {}).get("items") or []
    if record:
        items = [i for i in items
                 if ((i.get("spec") or {}).get("changeRecord") or {}).get("id") == record]
    items = sorted(items, key=lambda i: (meta(i).get("namespace", ""), meta(i).get("name", "")))
    return items, answer.date or datetime.now(UTC)


def write_mode(obj: Mapping[str, Any]) -> str:
    return str((meta(obj).get("annotations") or {}).get(WRITE_ANNOTATION) or CLIENT_SIDE)


@dataclass
class Live:
    obj: dict[str, Any] | None
    digest: str
    problems: list[str] = field(default_factory=list)


def live_state(api: Kube, site: Site, st: Statement) -> Live:
    """The live target and whether it is still where the change starts from."""
    p = st.predicate
    t = p.target
    obj = api.get(object_path(t.apiVersion, t.kind, t.namespace, t.name))
    auto = t.kind == "Deployment" and site.autoscaled(api, t.namespace, t.name)
    now_digest = digest(obj, site.rules, autoscaled=auto)
    live = Live(obj, now_digest)
    if now_digest != p.fromDigest:
        what = "does not exist" if obj is None else f"is at {now_digest}"
        live.problems.append(f"the live {t.kind.lower()} {t.name} {what}, but the change "
                             f"starts from {p.fromDigest}: it changed since the request; "
                             "request a new approval")
    elif obj is not None and str(meta(obj).get("uid")) != t.uid:
        live.problems.append(f"the live {t.kind.lower()} {t.name} is another object (uid "
                             f"{meta(obj).get('uid')}, the approval names {t.uid})")
    return live


def planned_write(obj: Mapping[str, Any], st: Statement, live: Live) -> Write | KubectlApply:
    """The write `changegate apply` sends for this approval."""
    spec = obj.get("spec") or {}
    if st.predicate.operation == "DELETE":
        if live.obj is None:
            raise ChangeGateError(f"{st.predicate.target.name} is already gone")
        return delete_write(live.obj)
    manifest = spec.get("manifest")
    if not isinstance(manifest, dict):
        raise ChangeGateError("the ChangeApproval has no manifest")
    return manifest_write(manifest, live.obj, write_mode(obj))


def check_produces(api: Kube, site: Site, obj: Mapping[str, Any], st: Statement, live: Live
                   ) -> tuple[list[str], tuple[str, ...]]:
    """Problems that make the approval unusable now, and the dry-run's warnings.

    Checks that the manifest has toDigest (what reviewers read is what they sign), and that
    the write `changegate apply` would send still produces toDigest, by a dry-run.
    """
    p = st.predicate
    t = p.target
    auto = t.kind == "Deployment" and site.autoscaled(api, t.namespace, t.name)
    problems = list(live.problems)
    if p.operation != "DELETE":
        got = manifest_digest(obj.get("spec") or {}, site.rules, auto)
        if got != p.toDigest:
            problems.append(f"the manifest's digest is {got}, not the signed toDigest "
                            f"{p.toDigest}: the manifest is not what was requested")
    if problems:
        return problems, ()
    write = planned_write(obj, st, live)
    result, warnings = dry_run(api, write)
    produced = digest(result, site.rules, autoscaled=auto)
    if produced != p.toDigest:
        problems.append(f"a dry-run of the approved manifest now produces {produced}, not "
                        f"the signed toDigest {p.toDigest} (a default or a mutating webhook "
                        "changed?); request a new approval")
    return problems, warnings


@dataclass
class Standing:
    """How far an approval is from admitting its change, as far as this user can tell."""

    approvers: list[str]
    required: int
    verified: bool  # True: checked against the trust store; False: status/signature count
    missing: list[str]


def standing(api: Kube, site: Site, obj: Mapping[str, Any], st: Statement,
             trust: TrustStore | None, now: datetime, applier: str | None = None) -> Standing:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ns = str(meta(obj).get("namespace", ""))
    required = int(status.get("required") or 0) or site.required_in(api, ns)
    missing: list[str] = []
    p = st.predicate
    if trust is not None:
        allow_sa = bool(site.policy and site.policy.allowServiceAccountApprovers)
        verified = verify_approval(ns, spec, trust, allow_service_accounts=allow_sa,
                                   automation=automation_users(site.policy or Policy()))
        approvers = sorted(verified.approvers)
        for problem in verified.problems:
            missing.append(f"{problem.code}: {problem.detail}")
        is_verified = True
    else:
        approvers = sorted(str(a) for a in status.get("approvers") or [])
        is_verified = False
    counted = [a for a in approvers if a != applier]
    if applier and applier in approvers:
        missing.append(f"you ({applier}) approved this change, so someone else must apply it")
    if len(counted) < required:
        signatures = len(spec.get("signatures") or [])
        how = "verified" if is_verified else "per status"
        missing.append(f"approvals {len(counted)}/{required} ({how}; {signatures} signature"
                       f"{'s' if signatures != 1 else ''}): needs {required - len(counted)} "
                       f"more from approvers other than {p.requestedBy}")
    if trust is not None:
        # Without the policy (only changegate-info readable) the defaults apply: an ai
        # change still needs its senior signature; automation users are not known here.
        senior = senior_problem(site.policy or Policy(), trust, st, frozenset(counted),
                                applier=applier)
        if senior is not None:
            missing.append(f"{senior.code}: {senior.detail}")
    if now >= st.expires_at:
        missing.append(f"expired at {p.expiresAt}: request a new approval")
    if status.get("phase") in TERMINAL:
        missing.append(f"phase {status['phase']}: it cannot be used again")
    return Standing(approvers, required, is_verified, missing)


def append_signature(api: Kube, namespace: str, name: str, signature: dict[str, str]) -> int:
    """Append one signature; on a concurrent write, re-read and try again.

    The JSON patch tests the resourceVersion it read, so a concurrent append is never
    overwritten: the API server refuses the stale patch (422 from the failed test, or 409),
    and the loop re-reads and appends to the new list. Returns the number of retries.
    """
    for attempt in range(CONFLICT_RETRIES):
        obj = get_approval(api, namespace, name)
        sigs = (obj.get("spec") or {}).get("signatures")
        if isinstance(sigs, list) and signature in sigs:
            return attempt  # our own earlier try landed after all
        rv = meta(obj).get("resourceVersion")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv}]
        if isinstance(sigs, list):
            ops.append({"op": "add", "path": "/spec/signatures/-", "value": signature})
        else:
            ops.append({"op": "add", "path": "/spec/signatures", "value": [signature]})
        try:
            api.call("PATCH", approvals_path(namespace, name), body=ops,
                     content_type=JSON_PATCH)
            return attempt
        except ApiError as exc:
            if exc.status not in (409, 422):
                raise
            current = get_approval(api, namespace, name)
            if meta(current).get("resourceVersion") == rv:
                raise  # not a race: the API server refused the signature itself
            time.sleep(0.05 * (attempt + 1))
    raise ChangeGateError(f"ChangeApproval {namespace}/{name} kept changing; try again")


__all__ = ["Live", "Standing", "append_signature", "check_produces",
           "get_approval", "list_approvals", "live_state", "planned_write", "standing",
           "statement_of", "write_mode"]
