"""The 'next:' line of a denial: the one command that moves the person forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from changegate.core.reasons import ReasonCode

if TYPE_CHECKING:
    from changegate.core.review import AdmissionRequest
    from changegate.core.verdict import Verdict

# str.format templates; the fields: ns, approval, record, kind (lower case), name.
NEXT_STEPS: dict[ReasonCode, str] = {
    ReasonCode.NO_APPROVAL: (
        "changegate request -f <manifest> -n {ns} --record <CHANGE-ID>, then two approvers "
        "run: changegate approve --record <CHANGE-ID> -n {ns}"),
    ReasonCode.APPROVALS_INSUFFICIENT: (
        "ask another approver: changegate approve {approval} -n {ns} (distinct trusted "
        "approvers, not the requester or applier)"),
    ReasonCode.SENIOR_APPROVAL_REQUIRED: (
        "ask a senior approver (senior: true in the trust store): changegate approve "
        "{approval} -n {ns}"),
    ReasonCode.AUTOMATION_APPROVER: (
        "automation identities never approve; ask a person: changegate approve {approval} "
        "-n {ns}"),
    ReasonCode.SELF_APPROVAL:
        "ask approvers other than yourself: changegate approve {approval} -n {ns}",
    ReasonCode.APPROVER_DUPLICATE:
        "ask a second, different approver: changegate approve {approval} -n {ns}",
    ReasonCode.APPLIER_APPROVAL:
        "let someone who did not approve apply it: changegate apply {approval} -n {ns}",
    ReasonCode.DIGEST_MISMATCH: (
        "apply exactly what was approved (changegate apply {approval} -n {ns}) or request a "
        "new approval for this change"),
    ReasonCode.EXPIRED:
        "request a new approval: changegate request -f <manifest> -n {ns} --record {record}",
    ReasonCode.APPROVAL_USED: "each approval is used once; request a new one under {record}",
    ReasonCode.RECORD_INCOMPLETE:
        "see what is missing: changegate list -n {ns} --record {record}",
    ReasonCode.CANARY_REQUIRED:
        "changegate request -f <manifest> -n {ns} --record <CHANGE-ID> --canary",
    ReasonCode.SCALE_DOWN: (
        "change spec.replicas through an approval (changegate request) or, in an incident: "
        "changegate break-glass --reason ... scale {kind}/{name}"),
    ReasonCode.RESTART_UNAPPROVED: (
        "changegate request --restart {kind}/{name} -n {ns} --record <CHANGE-ID>, then "
        "changegate apply"),
    ReasonCode.SIGNATURE_INVALID: "a signature does not verify: alert security, then request anew",
    ReasonCode.KEY_UNTRUSTED: "the signer's key is not in the trust store: ask a policy admin",
    ReasonCode.CONFIG_INVALID: "a policy admin must fix the changegate trust store or policy",
    ReasonCode.NAMESPACE_GUARD: "only policyAdminGroups may loosen a tier-1 namespace",
    ReasonCode.CHANGE_RECORD_INVALID:
        "use a change record id like CHG-1234 (changeRecordPattern)",
}


def next_step(code: ReasonCode, req: AdmissionRequest, v: Verdict) -> str:
    template = NEXT_STEPS.get(code)
    if template is None:
        return f"changegate status {v.approval} -n {req.namespace}" if v.approval else ""
    return template.format(ns=req.namespace, approval=v.approval,
                           record=v.record or "<CHANGE-ID>", kind=(v.kind or req.kind).lower(),
                           name=req.name)
