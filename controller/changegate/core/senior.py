"""AI-assisted and automation changes (SPEC §6a): who they are, and the senior signature.

A change written with an AI assistant, or made by an automated agent, needs
``seniorApprovals`` senior signatures among its counted approvers; the total stays
``requiredApprovals``. Pure functions of the policy, the trust store and the statement, so
the webhook, `changegate check`, the operator and the CLI give one answer.
"""

from __future__ import annotations

import functools

from changegate.core.approval import Problem
from changegate.core.policy import Policy
from changegate.core.reasons import ReasonCode
from changegate.core.statement import Statement
from changegate.core.trust import TrustStore

SENIOR_REQUIRED = ReasonCode.SENIOR_APPROVAL_REQUIRED
DECLARATION_MISSING = ReasonCode.STATEMENT_INVALID  # SPEC §6a: without it, invalid
MAX_NAMES = 8


def automation_users(policy: Policy) -> frozenset[str]:
    return _as_set(policy.automation.users)


def automation_key(policy: Policy) -> str:
    """The automation users as one string, for memo keys (verification depends on them)."""
    return _joined(policy.automation.users)


# Asked on every admission; the policy's tuple is the same object until the policy changes.
@functools.lru_cache(maxsize=64)
def _as_set(users: tuple[str, ...]) -> frozenset[str]:
    return frozenset(users)


@functools.lru_cache(maxsize=64)
def _joined(users: tuple[str, ...]) -> str:
    return ",".join(sorted(users))


def why_senior(policy: Policy, statement: Statement, applier: str | None = None,
               groups: frozenset[str] = frozenset()) -> str:
    """Why this change needs a senior signature ("" when it does not). ``applier`` None:
    not known yet (a CLI judging an approval before anyone applies it)."""
    p = statement.predicate
    if p.assistance == "ai":
        return "it is AI-assisted"
    if p.requestedBy in policy.automation.users:
        return f"it was requested by automation identity {p.requestedBy}"
    if applier is not None and policy.is_automation(applier, groups):
        return f"it is applied by automation identity {applier}"
    return ""


def senior_candidates(policy: Policy, trust: TrustStore, namespace: str,
                      exclude: frozenset[str]) -> list[str]:
    """Senior approvers the trust store lets approve in ``namespace``, minus ``exclude``."""
    eligible = trust.eligible_approvers(
        namespace, allow_service_accounts=policy.allowServiceAccountApprovers,
        automation=automation_users(policy))
    return sorted((eligible & trust.seniors()) - exclude)


def senior_problem(policy: Policy, trust: TrustStore, statement: Statement,
                   approvers: frozenset[str], *, applier: str | None = None,
                   groups: frozenset[str] = frozenset()) -> Problem | None:
    """The `senior_approval_required` problem, or None when the rule is met or not asked.

    ``approvers`` are the counted ones (verified, eligible, not the requester or applier).
    """
    why = why_senior(policy, statement, applier, groups)
    if not why:
        return None
    seniors = trust.seniors()
    have = approvers & seniors
    need = policy.seniorApprovals
    if len(have) >= need:
        return None
    missing = need - len(have)
    p = statement.predicate
    exclude = frozenset({p.requestedBy, *approvers, *([applier] if applier else [])})
    could = senior_candidates(policy, trust, p.target.namespace, exclude)
    who = (", ".join(could[:MAX_NAMES]) + (f" (+{len(could) - MAX_NAMES} more)"
                                           if len(could) > MAX_NAMES else "")
           if could else "nobody: the trust store lists no other senior approver here")
    plural = "s" if missing != 1 else ""
    return Problem(SENIOR_REQUIRED,
                   f"{missing} senior signature{plural} missing ({len(have)}/{need} senior "
                   f"among {len(approvers)} approvals; {why}); senior approvers who could "
                   f"sign in {p.target.namespace}: {who}")


def declaration_problem(policy: Policy, statement: Statement) -> Problem | None:
    """With requireAssistanceDeclaration, a statement that does not state `assistance`."""
    if policy.requireAssistanceDeclaration and statement.predicate.assistance is None:
        return Problem(DECLARATION_MISSING,
                       "the statement does not declare assistance (none or ai), which the "
                       "policy requires (requireAssistanceDeclaration): request it again "
                       "with changegate request --assisted none|ai")
    return None


def automation_in_trust(policy: Policy, trust: TrustStore, namespace: str) -> list[str]:
    """Trust-store approvers for ``namespace`` that are automation identities: ignored,
    with a warning."""
    users = automation_users(policy)
    return sorted(e.name for e in trust.entries
                  if e.role == "approver" and e.name in users and e.may_approve_in(namespace))
