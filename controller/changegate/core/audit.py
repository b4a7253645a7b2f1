"""The audit record of one admission decision: who did what, to which digests, under which
approval and record, and why it was decided so. The webhook writes it as one JSON line per
decision (logs.py adds, for a config-guard change, what the change changes).

It never carries secrets: no object bodies (a ConfigMap's data may be one), no statements
or signatures, no `userInfo.extra` (it holds credential ids). Pure: it is built for every
request.
"""

from __future__ import annotations

from typing import Any

from changegate.core.review import AdmissionRequest
from changegate.core.verdict import Decision


def audit_record(decision: Decision, request: AdmissionRequest | None, *, uid: str,
                 seconds: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "uid": uid,
        "decision": decision.outcome,
        "allowed": decision.allowed,
        "reason": decision.code,
        "detail": decision.detail,
        "operation": decision.operation,
        "kind": decision.kind,
        "namespace": decision.namespace,
        "durationMs": round(seconds * 1000, 3),
    }
    if request is not None:
        fields["user"] = request.username
        fields["groups"] = sorted(request.groups)
        fields["name"] = request.name
        fields["resource"] = request.resource
        fields["subResource"] = request.sub_resource or None
        fields["dryRun"] = request.dry_run
    if decision.from_digest != "none" or decision.to_digest != "none":
        fields["fromDigest"] = decision.from_digest
        fields["toDigest"] = decision.to_digest
    if decision.approval:
        fields["approval"] = decision.approval
    if decision.approvers:
        fields["approvers"] = list(decision.approvers)
    if decision.record:
        fields["record"] = decision.record
    if decision.approvals:
        fields["approvals"] = decision.approvals
    if decision.break_glass:
        fields["breakGlass"] = True
    if len(decision.reasons) > 1:
        fields["alsoReasons"] = [r.code for r in decision.reasons[1:]]
    if decision.config_change is not None:
        fields["config"], fields["loosened"] = decision.config_change
    return fields
