"""Why a gated object's digest moved (SPEC §7a). Pure: the record, the object, the facts.

The operator keeps, for every gated object of a tier-1 namespace, a small ``Seen`` record
of the object as it last saw it (record.py keeps them in ConfigMaps). When the object's
digest differs from the recorded one, ``explain`` names what let the change in:
- ``approval``: an approval for this object whose toDigest the object now has, and that
  could have admitted it (Approved, or already Applied);
- ``break-glass``: the change came with a fresh ``changegate.io/break-glass`` value (a
  review is owed);
- ``exempt``: the object is one an ``exemptWriters`` entry (or a built-in one) names;
- ``restart``: only a ``restartAnnotations`` key of the pod template moved, and the
  policy has ``restartWriters``;
- ``scale``: only ``spec.replicas`` moved, and up (every scale-up passes the scale guard
  without the webhook; a scale-down is gated unless an autoscaler owns the replicas, and
  then they are out of the digest);
- ``rebaseline``: nobody wrote the object since it was recorded (no newer managedFields
  time), but the view changed under it: a Kubernetes upgrade defaulting a new field, or
  a policy change of the ignored annotations or labels;
- ``warn``: the namespace is in warn mode, where the webhook admits and only warns (a
  ``WouldDeny`` Event, not an unexplained change);
- ``unexplained``: none of these (the webhook deleted, failing open, emergency-off, a
  write straight to etcd): counted, an Event, a review owed.

The record holds sub-digests rather than the old object: the digest without the restart
annotations and the digest without ``replicas`` tell a restart or a scale from any other
change, in ~200 bytes per object.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from changegate.core.digest import digest_of_view, view
from changegate.core.errors import NotCanonicalError
from changegate.core.policy import Policy

BREAK_GLASS = "changegate.io/break-glass"
# Phases of an approval that could have admitted the change it names.
ADMITTING = frozenset({"Approved", "Applied", "Promoted", "CanaryRunning"})
STATUS_SUBRESOURCES = frozenset({"status"})


def short(text: str) -> str:
    """16 hex digits of sha256: enough to tell two values apart, small to keep."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Seen:
    """One gated object as the operator last recorded it."""

    kind: str
    namespace: str
    name: str
    uid: str
    digest: str  # the full digest, as the webhook computes it
    restartless: str  # short digest of the view without the restart annotations
    replicaless: str  # short digest of the view without spec.replicas
    replicas: int | None
    glass: str  # short() of the break-glass annotation value, "" when absent
    wrote: str  # the newest managedFields time of a write to the object itself
    basis: str  # short() of what the digest depends on besides the object (see basis())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Seen | None:
        try:
            doc = json.loads(text)
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None


def basis(server_version: str, policy: Policy, autoscaled: bool) -> str:
    """What changes a digest without a write: the API server's defaulting (its version),
    the policy's ignored annotations and labels, and whether replicas are counted."""
    rules = (sorted(policy.ignoredAnnotations), sorted(policy.ignoredLabels), autoscaled)
    return short(json.dumps([server_version, rules]))


def last_write(obj: Mapping[str, Any]) -> str:
    """The newest managedFields time of a write to the object (not to its status): the
    API server stamps it on every create, update, patch and apply, in its own clock."""
    times = [str(e.get("time") or "") for e in _fields(obj)
             if e.get("subresource") not in STATUS_SUBRESOURCES]
    return max(times, default="")


def writers_since(obj: Mapping[str, Any], since: str) -> list[str]:
    """Who wrote the object since ``since``, as far as managedFields tell (a manager name,
    e.g. kubectl-client-side-apply, not a person). managedFields times have whole seconds,
    so a write in the same second as ``since`` is named too: naming one writer too many
    beats naming nobody."""
    out = []
    for e in _fields(obj):
        if e.get("subresource") in STATUS_SUBRESOURCES or str(e.get("time") or "") < since:
            continue
        sub = f"/{e['subresource']}" if e.get("subresource") else ""
        out.append(f"{e.get('manager') or '?'} ({e.get('operation') or '?'}{sub})")
    return sorted(set(out))


def _fields(obj: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return [e for e in entries if isinstance(e, dict)]


def seen(obj: Mapping[str, Any], kind: str, policy: Policy, autoscaled: bool,
         server_version: str) -> Seen | None:
    """The record of ``obj`` now, or None when it has no digest (not canonical)."""
    meta = obj.get("metadata") or {}
    try:
        v = view(obj, policy.view_rules, autoscaled=autoscaled)
        full = digest_of_view(v)
        restartless = replicaless = full
        if kind == "Deployment":
            spec = dict(v.get("spec") or {})
            template = dict(spec.get("template") or {})
            tmeta = dict(template.get("metadata") or {})
            tmeta["annotations"] = {k: a for k, a in (tmeta.get("annotations") or {}).items()
                                    if k not in policy.restartAnnotations}
            restartless = digest_of_view({**v, "spec": {**spec, "template": {
                **template, "metadata": tmeta}}})
            replicaless = digest_of_view({**v, "spec": {k: s for k, s in spec.items()
                                                        if k != "replicas"}})
    except NotCanonicalError:
        return None
    replicas = (obj.get("spec") or {}).get("replicas") if kind == "Deployment" else None
    glass = (meta.get("annotations") or {}).get(BREAK_GLASS)
    return Seen(kind=kind, namespace=str(meta.get("namespace") or ""),
                name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
                digest=full, restartless=short(restartless), replicaless=short(replicaless),
                replicas=replicas if isinstance(replicas, int) else None,
                glass=short(glass) if isinstance(glass, str) and glass.strip() else "",
                wrote=last_write(obj), basis=basis(server_version, policy, autoscaled))


@dataclass(frozen=True)
class Explanation:
    cause: str  # approval | break-glass | exempt | restart | scale | rebaseline | warn
    #             | unexplained
    detail: str


def explain(before: Seen | None, now: Seen, obj: Mapping[str, Any], *, policy: Policy,
            approvals: Iterable[Mapping[str, str]], warn_mode: bool,
            exempt: bool) -> Explanation:
    """Why the object moved from ``before`` (None: it was created) to ``now``."""
    created = before is None or before.uid != now.uid
    for a in approvals:
        op_fits = (a.get("operation") == "CREATE") if created else \
            (a.get("operation") == "UPDATE" and a.get("targetUid") == now.uid)
        if op_fits and a.get("toDigest") == now.digest and a.get("phase") in ADMITTING:
            return Explanation("approval", f"ChangeApproval {a.get('name')}")
    if now.glass and (created or now.glass != before.glass):  # type: ignore[union-attr]
        reason = (obj.get("metadata") or {}).get("annotations", {}).get(BREAK_GLASS, "")
        return Explanation("break-glass", str(reason))
    if exempt:
        return Explanation("exempt", "an exemptWriters entry names this object")
    if not created:
        assert before is not None
        if before.restartless == now.restartless and (policy.restartWriters.users or
                                                      policy.restartWriters.groups):
            return Explanation("restart", "only a restart annotation of the pod template moved")
        if before.replicaless == now.replicaless and (now.replicas or 0) > (before.replicas or 0):
            return Explanation("scale", f"replicas {before.replicas} -> {now.replicas}")
        if before.basis != now.basis and now.wrote <= before.wrote:
            return Explanation("rebaseline", "no write since it was recorded; the view "
                                             "changed (Kubernetes upgrade or policy)")
    writers = writers_since(obj, "" if created else before.wrote)  # type: ignore[union-attr]
    what = "created" if created else f"{before.digest} -> {now.digest}"  # type: ignore[union-attr]
    detail = f"{now.kind} {now.namespace}/{now.name} {what}; written by " \
             f"{', '.join(writers) or 'nobody managedFields name'}"
    if warn_mode:
        return Explanation("warn", detail)
    return Explanation("unexplained", detail)
