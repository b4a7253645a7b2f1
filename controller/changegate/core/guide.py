"""The 'next:' line of a denial: the one command that moves the person forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changegate.core.review import AdmissionRequest
    from changegate.core.verdict import Verdict


def next_step(code: str, req: AdmissionRequest, v: Verdict) -> str:
    ns, approval = req.namespace, v.approval
    record = v.record or "<CHANGE-ID>"
    match code:
        case "no_approval":
            return (f"changegate request -f <manifest> -n {ns} --record <CHANGE-ID>, then two "
                    f"approvers run: changegate approve --record <CHANGE-ID> -n {ns}")
        case "approvals_insufficient":
            return (f"ask another approver: changegate approve {approval} -n {ns} "
                    "(distinct trusted approvers, not the requester or applier)")
        case "senior_approval_required":
            return (f"ask a senior approver (senior: true in the trust store): changegate "
                    f"approve {approval} -n {ns}")
        case "automation_approver":
            return (f"automation identities never approve; ask a person: changegate approve "
                    f"{approval} -n {ns}")
        case "self_approval":
            return f"ask approvers other than yourself: changegate approve {approval} -n {ns}"
        case "approver_duplicate":
            return f"ask a second, different approver: changegate approve {approval} -n {ns}"
        case "applier_approval":
            return (f"let someone who did not approve apply it: changegate apply {approval} "
                    f"-n {ns}")
        case "digest_mismatch":
            return (f"apply exactly what was approved (changegate apply {approval} -n {ns}) "
                    "or request a new approval for this change")
        case "expired":
            return (f"request a new approval: changegate request -f <manifest> -n {ns} "
                    f"--record {record}")
        case "approval_used":
            return f"each approval is used once; request a new one under {record}"
        case "record_incomplete":
            return f"see what is missing: changegate list -n {ns} --record {record}"
        case "canary_required":
            return f"changegate request -f <manifest> -n {ns} --record <CHANGE-ID> --canary"
        case "scale_down":
            return ("change spec.replicas through an approval (changegate request) or, in an "
                    f"incident: changegate break-glass --reason ... scale {_kind(req, v)}/"
                    f"{req.name}")
        case "restart_unapproved":
            return (f"changegate request --restart {_kind(req, v)}/{req.name} -n {ns} --record "
                    "<CHANGE-ID>, then changegate apply")
        case "signature_invalid":
            return "a signature does not verify: alert security, then request anew"
        case "key_untrusted":
            return "the signer's key is not in the trust store: ask a policy admin"
        case "config_invalid":
            return "a policy admin must fix the changegate trust store or policy"
        case "namespace_guard":
            return "only policyAdminGroups may loosen a tier-1 namespace"
        case "change_record_invalid":
            return "use a change record id like CHG-1234 (changeRecordPattern)"
    return f"changegate status {approval} -n {ns}" if approval else ""


def _kind(req: AdmissionRequest, v: Verdict) -> str:
    return (v.kind or req.kind).lower()
