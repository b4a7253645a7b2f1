"""Verdict (built while deciding) and Decision (what every adapter reads).

Reason codes (`ReasonCode`, docs/contracts.md) are the stable vocabulary: the message, the
metric label and the CLI's exit code are all derived from them here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from changegate.core.approval import Problem
from changegate.core.guide import next_step
from changegate.core.reasons import Category, ReasonCode

if TYPE_CHECKING:
    from changegate.core.policy import NamespaceSettings
    from changegate.core.review import AdmissionRequest
    from changegate.core.snapshot import Snapshot

Outcome = Literal["allowed", "denied", "warned", "error"]
MAX_WARNING = 255  # the API server may cut longer warnings


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The answer, as every adapter reads it, built once per admission and never changed."""

    allowed: bool
    outcome: Outcome
    code: ReasonCode  # primary reason code
    detail: str
    reasons: tuple[Problem, ...]
    message: str  # the denial text (empty when allowed)
    warnings: tuple[str, ...]
    audit: MappingProxyType[str, str]
    kind: str
    operation: str
    namespace: str
    from_digest: str = "none"
    to_digest: str = "none"
    approvals: str = ""
    record: str = ""
    approval: str = ""
    approvers: tuple[str, ...] = ()
    break_glass: bool = False
    signature_results: tuple[str, ...] = ()
    policy_change: bool | None = None  # namespace guard: loosening seen (allowed?)
    config_change: tuple[str, bool] | None = None  # (config name, loosened)
    dry_run: bool = False

    def __repr__(self) -> str:
        return (f"Decision(outcome={self.outcome!r}, code={self.code!r}, "
                f"detail={self.detail!r})")

    @property
    def exit_code(self) -> int:
        return 0 if self.allowed else 1


def machine_line(op: str, old: str, new: str, approvals: str, record: str) -> str:
    return (f"changegate: op={op} from={old} to={new} approvals={approvals} "
            f"record={record or 'none'}")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 3] + "..."


@dataclass(kw_only=True, slots=True)
class Verdict:
    """A decision while it is being made: a route fills it in, finish() makes the Decision."""

    allowed: bool = False
    # A route that never names its reason denies, as the webhook's own fault: fail closed.
    code: ReasonCode = ReasonCode.INTERNAL_ERROR
    detail: str = ""
    kind: str = ""
    settings: NamespaceSettings | None = None
    warnings: list[str] = field(default_factory=list)
    extra: list[Problem] = field(default_factory=list)
    from_digest: str = "none"
    to_digest: str = "none"
    approval: str = ""
    approvers: frozenset[str] = frozenset()
    approvals: int = 0
    record: str = ""
    nonce: str = ""
    image_tags: list[str] = field(default_factory=list)
    break_glass: bool = False
    signature_results: tuple[str, ...] = ()
    policy_change: bool | None = None
    config_change: tuple[str, bool] | None = None

    @classmethod
    def allow(cls, code: ReasonCode, detail: str) -> Verdict:
        return cls(allowed=True, code=code, detail=detail)

    @classmethod
    def deny(cls, code: ReasonCode, detail: str) -> Verdict:
        return cls(allowed=False, code=code, detail=detail)

    def set_allow(self, code: ReasonCode, detail: str) -> Verdict:
        self.allowed, self.code, self.detail = True, code, detail
        return self

    def set_deny(self, code: ReasonCode, detail: str) -> Verdict:
        self.allowed, self.code, self.detail = False, code, detail
        return self

    def finish(self, req: AdmissionRequest, snap: Snapshot) -> Decision:
        required = self.settings.required_approvals if self.settings else (
            snap.policy.requiredApprovals if snap.policy else 2)
        approvals = f"{self.approvals}/{required}"
        outcome: Outcome = "allowed" if self.allowed else (
            "error" if self.code.category is Category.FAULT else "denied")
        warnings = self.warnings
        message = ""
        # Keys without a prefix or "/" (SPEC §5): kube-apiserver stores each as
        # "<webhook entry name>/<key>" (deployments.changegate.io/decision) and drops any
        # key that would then hold two "/", so a prefixed key never reached the audit log.
        audit = {"decision": f"{outcome}:{self.code}"}
        if self.record:
            audit["change-record"] = self.record
        if self.approval:
            audit["approval"] = f"{req.namespace}/{self.approval}"
        if self.approvers and self.allowed:
            audit["approvers"] = ",".join(sorted(self.approvers))
        if self.kind:
            audit["from"] = self.from_digest
            audit["to"] = self.to_digest
        allowed = self.allowed
        if allowed:
            if self.image_tags:
                warnings = warnings + [
                    f"changegate: image {t} is not pinned by digest; the approval covers "
                    "the tag, not the image" for t in self.image_tags]
        else:
            warnings, message = self._denial(req, snap, approvals)
            if not message:
                outcome, allowed = "warned", True
                audit["decision"] = f"warned:{self.code}"
        if req.dry_run and allowed and outcome == "allowed":
            warnings = []  # a dry-run that would pass stays silent: --warnings-as-errors works
        return Decision(
            allowed=allowed, outcome=outcome, code=self.code, detail=self.detail,
            reasons=(Problem(self.code, self.detail), *self.extra), message=message,
            warnings=tuple(map(_cut, warnings)),
            audit=MappingProxyType(audit), kind=self.kind or req.kind,
            operation=req.operation, namespace=req.namespace, from_digest=self.from_digest,
            to_digest=self.to_digest, approvals=approvals, record=self.record,
            approval=self.approval, approvers=tuple(sorted(self.approvers)),
            # A dry-run (kubectl diff, Argo CD's diff) changes nothing: no break-glass, no
            # config or policy change to count or page on.
            break_glass=self.break_glass and not req.dry_run,
            signature_results=self.signature_results,
            policy_change=None if req.dry_run else self.policy_change,
            config_change=None if req.dry_run else self.config_change,
            dry_run=req.dry_run)

    def _denial(self, req: AdmissionRequest, snap: Snapshot, approvals: str
                ) -> tuple[list[str], str]:
        """(warnings, message) of a denial; no message when it is only warned (warn mode, a
        dry-run under dryRun: warn): the request is then admitted with the would-DENY lines."""
        line = machine_line(req.operation, self.from_digest, self.to_digest, approvals,
                            self.record)
        step = next_step(self.code, req, self)
        mode = self.settings.mode if self.settings else "deny"
        dry = req.dry_run and (snap.policy is None or snap.policy.dryRun == "warn")
        if self.code.category is not Category.FAULT and (dry or mode == "warn"):
            prefix = "changegate: would DENY:" if dry else "changegate: would DENY (warn):"
            warnings = [_cut(f"{prefix} {self.code}: {self.detail}")]
            if self.kind:
                warnings += [f"changegate: from {self.from_digest}",
                             f"changegate: to {self.to_digest}"]
            if step:
                warnings.append(_cut(f"changegate: next: {step}"))
            warnings.append(line)
            return warnings, ""
        what = f"{req.operation} {self.kind or req.kind} {req.namespace}/{req.name}".replace(
            " /", " ")
        lines = [f"changegate: {what} denied: {self.detail}", f"  reason: {self.code}"]
        lines.extend(f"  also: {p.code}: {p.detail}" for p in self.extra[:4])
        if self.kind:
            lines += [f"  from: {self.from_digest}", f"  to:   {self.to_digest}"]
        if step:
            lines.append(f"  next: {step}")
        lines.append(line)
        return self.warnings, "\n".join(lines)
