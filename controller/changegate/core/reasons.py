"""The reason codes: the stable vocabulary of every decision (docs/contracts.md).

One enum for every reader: the core sets them, the webhook's metrics bound their `reason`
label to them, the chart's alerts page on the `trust` ones and watch the `fault` ones, and
docs/contracts.md lists them by category (tests hold each of those to this list, and check
that the tests produce every code: tests/unit/test_reasons.py).

Categories: `trust` — a forged, untrusted, reused or tampered approval (pages); `rule` —
a change that waits for approvals or is not the approved one (tickets at most); `fault`
— the webhook itself could not decide (fails closed); `allow` — why a change was admitted.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    TRUST = "trust"
    RULE = "rule"
    FAULT = "fault"
    ALLOW = "allow"


class ReasonCode(StrEnum):
    """A reason code; it compares equal to its string (`ReasonCode.EXPIRED == "expired"`)."""

    category: Category

    def __new__(cls, value: str, category: Category | None = None) -> ReasonCode:
        # Runs once per member, at class creation. `ReasonCode("expired")` looks a member up
        # (the enum machinery) and never gets here: the default only lets type checkers
        # accept that call.
        if category is None:
            raise TypeError(f"reason code {value!r} without a category")
        member = str.__new__(cls, value)
        member._value_ = value
        member.category = category
        return member

    # Deny: trust and signature.
    SIGNATURE_INVALID = "signature_invalid", Category.TRUST
    KEY_UNTRUSTED = "key_untrusted", Category.TRUST
    APPROVER_WRONG_NAMESPACE = "approver_wrong_namespace", Category.TRUST
    APPROVER_DUPLICATE = "approver_duplicate", Category.TRUST
    SELF_APPROVAL = "self_approval", Category.TRUST
    APPLIER_APPROVAL = "applier_approval", Category.TRUST
    APPROVAL_USED = "approval_used", Category.TRUST
    SPEC_STATEMENT_MISMATCH = "spec_statement_mismatch", Category.TRUST
    STATEMENT_INVALID = "statement_invalid", Category.TRUST
    MANIFEST_MISMATCH = "manifest_mismatch", Category.TRUST
    REQUESTER_MISMATCH = "requester_mismatch", Category.TRUST
    APPROVAL_IMMUTABLE = "approval_immutable", Category.TRUST
    # Deny: waiting, or not the approved change.
    NO_APPROVAL = "no_approval", Category.RULE
    APPROVALS_INSUFFICIENT = "approvals_insufficient", Category.RULE
    EXPIRED = "expired", Category.RULE
    NOT_YET_VALID = "not_yet_valid", Category.RULE
    LIFETIME_EXCEEDED = "lifetime_exceeded", Category.RULE
    TARGET_MISMATCH = "target_mismatch", Category.RULE
    OPERATION_MISMATCH = "operation_mismatch", Category.RULE
    CLUSTER_MISMATCH = "cluster_mismatch", Category.RULE
    DIGEST_MISMATCH = "digest_mismatch", Category.RULE
    CHANGE_RECORD_INVALID = "change_record_invalid", Category.RULE
    RECORD_INCOMPLETE = "record_incomplete", Category.RULE
    NOT_CANONICAL = "not_canonical", Category.RULE
    IMAGE_NOT_PINNED = "image_not_pinned", Category.RULE
    SCALE_DOWN = "scale_down", Category.RULE
    NAMESPACE_GUARD = "namespace_guard", Category.RULE
    CONFIG_GUARD = "config_guard", Category.RULE
    CANARY_REQUIRED = "canary_required", Category.RULE
    RESTART_UNAPPROVED = "restart_unapproved", Category.RULE
    # An AI-assisted or automation change short of senior signatures (SPEC §6a).
    SENIOR_APPROVAL_REQUIRED = "senior_approval_required", Category.RULE
    # An automation identity's signature: never counted (SPEC §6a).
    AUTOMATION_APPROVER = "automation_approver", Category.RULE
    # Deny: the webhook itself (decision `error`; never turned into a warning).
    CONFIG_INVALID = "config_invalid", Category.FAULT
    CACHE_NOT_READY = "cache_not_ready", Category.FAULT
    INTERNAL_ERROR = "internal_error", Category.FAULT
    DEADLINE_EXCEEDED = "deadline_exceeded", Category.FAULT
    # A namespace the webhook's state does not hold and the API server did not show it.
    NAMESPACE_UNKNOWN = "namespace_unknown", Category.FAULT
    # Allow.
    APPROVED = "approved", Category.ALLOW
    NOT_GATED = "not_gated", Category.ALLOW
    NO_CHANGE = "no_change", Category.ALLOW
    BREAK_GLASS = "break_glass", Category.ALLOW
    EXEMPT_WRITER = "exempt_writer", Category.ALLOW
    RESTART = "restart", Category.ALLOW
    NAMESPACE_TERMINATING = "namespace_terminating", Category.ALLOW
    SCALE_UP = "scale_up", Category.ALLOW
    CONFIG_CHANGE = "config_change", Category.ALLOW
    POLICY_CHANGE = "policy_change", Category.ALLOW

    @classmethod
    def of(cls, category: Category) -> tuple[ReasonCode, ...]:
        return tuple(code for code in cls if code.category is category)

