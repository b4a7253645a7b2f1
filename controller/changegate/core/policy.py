"""Policy (SPEC §6, §9): cluster defaults, refined per namespace by annotations."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from changegate.core.digest import ViewRules
from changegate.core.errors import PolicyError

Mode = Literal["deny", "canary", "warn"]
# Strictest first: a namespace may only be *loosened* by policy admins (namespace guard).
MODE_STRICTNESS: dict[str, int] = {"deny": 3, "canary": 2, "warn": 1}
ENFORCEMENT_ANNOTATION = "changegate.io/enforcement"
REQUIRED_APPROVALS_ANNOTATION = "changegate.io/required-approvals"
MAX_REQUIRED_APPROVALS = 16  # SPEC §6; a statement carries at most 16 signatures anyway

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str | int) -> int:
    """'24h', '30d', '1h30m', '90s' or plain seconds -> seconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _DURATION.match(str(text).strip())
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration like 24h, 30d, 1h30m or 90s")
    d, h, m, s = (int(g or 0) for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


class ExemptWriter(BaseModel):
    """Lets a named identity write named objects of a gated kind: identity AND name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    kinds: tuple[Literal["Deployment", "ConfigMap"], ...] = Field(min_length=1)
    namespaces: tuple[str, ...] = ("*",)
    names: tuple[str, ...] = Field(min_length=1)  # shell-style patterns, e.g. istio-ca-root-cert

    def matches(self, user: str, groups: frozenset[str], kind: str, namespace: str,
                name: str) -> bool:
        who = user in self.users or bool(groups.intersection(self.groups))
        return (
            who
            and kind in self.kinds
            and ("*" in self.namespaces or namespace in self.namespaces)
            and any(fnmatchcase(name, pattern) for pattern in self.names)
        )


# The root-CA publisher writes kube-root-ca.crt into every namespace (SPEC §5).
BUILT_IN_EXEMPT = (
    ExemptWriter(
        users=("system:serviceaccount:kube-system:root-ca-cert-publisher",
               "system:kube-controller-manager"),
        kinds=("ConfigMap",),
        names=("kube-root-ca.crt",),
    ),
)


class Identities(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def includes(self, user: str, groups: frozenset[str]) -> bool:
        return user in self.users or bool(groups.intersection(self.groups))


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str
    name: str


class Policy(BaseModel):
    """policy.yaml. Unknown keys are errors: a typo must not silently loosen anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tierSelector: dict[str, str] = Field(default_factory=lambda: {"tier": "tier-1"})
    enforcement: Mode = "deny"
    clusterName: str = ""
    requiredApprovals: int = Field(default=2, ge=1)
    gatedOperations: tuple[Literal["CREATE", "UPDATE", "DELETE"], ...] = (
        "CREATE", "UPDATE", "DELETE")
    changeRecordPattern: str = r"^[A-Z][A-Z0-9]+-[0-9]+$"
    maxApprovalLifetime: int = 24 * 3600
    breakGlassGroups: tuple[str, ...] = ()
    ignoredAnnotations: tuple[str, ...] = ()
    ignoredLabels: tuple[str, ...] = ()
    autoscaled: tuple[Workload, ...] = ()
    dryRun: Literal["warn", "enforce"] = "warn"
    trustedCreators: tuple[str, ...] = ()
    policyAdminGroups: tuple[str, ...] = ()
    scaleExemptUsers: tuple[str, ...] = (
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "system:kube-controller-manager",
    )
    maxCanaryReplicas: int = Field(default=1, ge=1)
    canaryMinApprovals: int = Field(default=1, ge=1)
    requireImageDigests: bool = False
    allowServiceAccountApprovers: bool = False
    reviewDeadline: int = 24 * 3600
    atomicRecords: bool = True
    exemptWriters: tuple[ExemptWriter, ...] = ()
    restartWriters: Identities = Identities()
    restartAnnotations: tuple[str, ...] = ("kubectl.kubernetes.io/restartedAt",)
    approvalRetention: int = 30 * 24 * 3600
    # SPEC §6a: agents and automation; they never approve, never break glass, and their
    # changes (and AI-assisted ones) need seniorApprovals senior signatures among the count.
    automation: Identities = Identities()
    seniorApprovals: int = Field(default=1, ge=1)
    requireAssistanceDeclaration: bool = False

    @field_validator("maxApprovalLifetime", "reviewDeadline", "approvalRetention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

    @field_validator("changeRecordPattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @functools.cached_property
    def view_rules(self) -> ViewRules:
        return ViewRules(self.ignoredAnnotations, self.ignoredLabels)

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.tierSelector.items())

    def is_automation(self, user: str, groups: frozenset[str] = frozenset()) -> bool:
        """An automation identity (SPEC §6a): a listed user, or a member of a listed group."""
        return self.automation.includes(user, groups)

    def is_autoscaled(self, namespace: str, name: str) -> bool:
        return any(w.namespace == namespace and w.name == name for w in self.autoscaled)


def load_policy(text: str | bytes | None) -> Policy:
    """Parse policy.yaml (empty means all defaults). Raises PolicyError naming the key."""
    try:
        doc = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError("policy: the top level must be a mapping")
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        if err["type"] == "extra_forbidden":
            raise PolicyError(f"policy: unknown setting {where!r}") from exc
        raise PolicyError(f"policy: {where}: {err['msg']}") from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class NamespaceSettings:
    """What applies in one namespace once its annotations are read."""

    mode: Mode
    required_approvals: int
    notes: tuple[str, ...] = ()  # annotation values that were ignored, for warnings


def namespace_settings(policy: Policy, annotations: dict[str, str]) -> NamespaceSettings:
    notes: list[str] = []
    mode: Mode = policy.enforcement
    raw_mode = annotations.get(ENFORCEMENT_ANNOTATION)
    if raw_mode is not None:
        if raw_mode in MODE_STRICTNESS:
            mode = raw_mode  # type: ignore[assignment]  # checked against the Literal's values
        else:
            # Unreadable means strictest: a typo must never loosen a namespace.
            mode = "deny"
            notes.append(f"{ENFORCEMENT_ANNOTATION}={raw_mode!r} is not deny|canary|warn; "
                         "using deny")
    required = policy.requiredApprovals
    raw_required = annotations.get(REQUIRED_APPROVALS_ANNOTATION)
    if raw_required is not None:
        value = required_approvals_value(raw_required)
        if value is None:
            notes.append(f"{REQUIRED_APPROVALS_ANNOTATION}={str(raw_required)[:40]!r} is not a "
                         f"number from 1 to 16; ignored, using {required}")
        else:
            required = max(required, value)  # it can only raise the count
    return NamespaceSettings(mode=mode, required_approvals=required, notes=tuple(notes))


_REQUIRED = re.compile(r"[0-9]{1,2}")  # ASCII only: str.isdigit() accepts "²", int() does not


def required_approvals_value(raw: object) -> int | None:
    """The annotation's count (SPEC §6: ASCII digits, 1 to 16), or None when unreadable."""
    if not isinstance(raw, str) or not _REQUIRED.fullmatch(raw):
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_REQUIRED_APPROVALS else None
