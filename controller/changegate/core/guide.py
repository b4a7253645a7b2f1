"""The 'next:' line of a denial: the one command that moves the person forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changegate.core.review import AdmissionRequest
    from changegate.core.verdict import Verdict


def next_step(code: str, req: AdmissionRequest, v: Verdict) -> str:
    ns, name = req.namespace, req.name
    kind = (v.kind or req.kind).lower()
    record = v.record or "<CHANGE-ID>"
    steps = {
        "no_approval": f"changegate request -f <manifest> -n {ns} --record <CHANGE-ID>, then two "
                       f"approvers run: changegate approve --record <CHANGE-ID> -n {ns}",
        "approvals_insufficient": f"ask another approver: changegate approve {v.approval} -n {ns}"
                                  f" (distinct trusted approvers, not the requester or applier)",
        "self_approval": f"ask approvers other than yourself: changegate approve {v.approval} "
                         f"-n {ns}",
        "approver_duplicate": f"ask a second, different approver: changegate approve "
                              f"{v.approval} -n {ns}",
        "applier_approval": f"let someone who did not approve apply it: changegate apply "
                            f"{v.approval} -n {ns}",
        "digest_mismatch": f"apply exactly what was approved (changegate apply {v.approval} -n "
                           f"{ns}) or request a new approval for this change",
        "expired": f"request a new approval: changegate request -f <manifest> -n {ns} "
                   f"--record {record}",
        "approval_used": f"each approval is used once; request a new one under {record}",
        "record_incomplete": f"see what is missing: changegate list -n {ns} --record {record}",
        "canary_required": f"changegate request -f <manifest> -n {ns} --record <CHANGE-ID> "
                           "--canary",
        "scale_down": f"change spec.replicas through an approval (changegate request) or, in an "
                      f"incident: changegate break-glass --reason ... scale {kind}/{name}",
        "restart_unapproved": f"changegate request --restart {kind}/{name} -n {ns} --record "
                              "<CHANGE-ID>, then changegate apply",
        "signature_invalid": "a signature does not verify: alert security, then request anew",
        "key_untrusted": "the signer's key is not in the trust store: ask a policy admin",
        "config_invalid": "a policy admin must fix the changegate trust store or policy",
        "namespace_guard": "only policyAdminGroups may loosen a tier-1 namespace",
        "change_record_invalid": "use a change record id like CHG-1234 (changeRecordPattern)",
    }
    return steps.get(code, "changegate status <approval> -n " + ns if v.approval else "")
