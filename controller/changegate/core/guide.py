"""The 'next:' line of a denial: the one command that moves the person forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changegate.core.review import AdmissionRequest
    from changegate.core.verdict import Verdict

# Templates, formatted only for the code asked for (this runs on every denial).
STEPS: dict[str, str] = {
    "no_approval": "changegate request -f <manifest> -n {ns} --record <CHANGE-ID>, then two "
                   "approvers run: changegate approve --record <CHANGE-ID> -n {ns}",
    "approvals_insufficient": "ask another approver: changegate approve {approval} -n {ns} "
                              "(distinct trusted approvers, not the requester or applier)",
    "self_approval": "ask approvers other than yourself: changegate approve {approval} -n {ns}",
    "approver_duplicate": "ask a second, different approver: changegate approve {approval} "
                          "-n {ns}",
    "applier_approval": "let someone who did not approve apply it: changegate apply "
                        "{approval} -n {ns}",
    "digest_mismatch": "apply exactly what was approved (changegate apply {approval} -n {ns}) "
                       "or request a new approval for this change",
    "expired": "request a new approval: changegate request -f <manifest> -n {ns} "
               "--record {record}",
    "approval_used": "each approval is used once; request a new one under {record}",
    "record_incomplete": "see what is missing: changegate list -n {ns} --record {record}",
    "canary_required": "changegate request -f <manifest> -n {ns} --record <CHANGE-ID> --canary",
    "scale_down": "change spec.replicas through an approval (changegate request) or, in an "
                  "incident: changegate break-glass --reason ... scale {kind}/{name}",
    "restart_unapproved": "changegate request --restart {kind}/{name} -n {ns} --record "
                          "<CHANGE-ID>, then changegate apply",
    "signature_invalid": "a signature does not verify: alert security, then request anew",
    "key_untrusted": "the signer's key is not in the trust store: ask a policy admin",
    "config_invalid": "a policy admin must fix the changegate trust store or policy",
    "namespace_guard": "only policyAdminGroups may loosen a tier-1 namespace",
    "change_record_invalid": "use a change record id like CHG-1234 (changeRecordPattern)",
}


def next_step(code: str, req: AdmissionRequest, v: Verdict) -> str:
    template = STEPS.get(code)
    if template is None:
        template = "changegate status {approval} -n {ns}" if v.approval else ""
    return template.format(ns=req.namespace, name=req.name, approval=v.approval,
                           record=v.record or "<CHANGE-ID>", kind=(v.kind or req.kind).lower())
