"""`changegate check` (the webhook's own decision, offline) and `changegate verify`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from changegate.core.approval import VerifiedApproval, verify_approval
from changegate.core.decision import Context, decide
from changegate.core.errors import ChangeGateError
from changegate.core.review import build_response, parse_review
from changegate.core.snapshot import ApprovalObject
from changegate.core.statement import parse_time
from changegate.core.trust import load_trust_store
from changegate.core.verdict import Decision
from changegate.files import build_snapshot, load_documents, load_json, read_text


def _now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        return parse_time(value)
    except ChangeGateError as exc:
        raise click.BadParameter(str(exc), param_hint="--now") from exc


def decision_json(decision: Decision, uid: str) -> dict[str, Any]:
    response = build_response(uid, allowed=decision.allowed, message=decision.message,
                              warnings=decision.warnings, audit=decision.audit)
    return {"allowed": decision.allowed, "decision": decision.outcome, "reason": decision.code,
            "detail": decision.detail,
            "reasons": [{"code": r.code, "detail": r.detail} for r in decision.reasons],
            "fromDigest": decision.from_digest, "toDigest": decision.to_digest,
            "approvals": decision.approvals, "approvers": list(decision.approvers),
            "record": decision.record or None, "response": response}


class _Exit2(click.UsageError):
    exit_code = 2


@click.command()
@click.option("--review", "review_path", required=True, type=click.Path(dir_okay=False),
              help="AdmissionReview JSON, as the API server sends it.")
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False),
              help="Trust store (approvers.yaml).")
@click.option("--approval", "approval_paths", multiple=True, type=click.Path(dir_okay=False),
              help="ChangeApproval file (YAML or JSON, one object or a List); repeatable.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="policy.yaml")
@click.option("--namespace", "namespace_path", type=click.Path(dir_okay=False),
              help="The Namespace object (default: tier-1, no annotations).")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False),
              help="Ledger ConfigMaps (one, or a List).")
@click.option("--now", "now_text", help="Decide at this RFC 3339 UTC time (default: now).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def check(review_path: str, trust_path: str, approval_paths: tuple[str, ...],
          policy_path: str | None, namespace_path: str | None, ledger_path: str | None,
          now_text: str | None, output: str) -> None:
    """The webhook's decision, offline. Exit 0 allow (also a dry-run), 1 deny, 2 bad input."""
    now = _now(now_text)
    try:
        doc = load_json(review_path)
        request = parse_review(doc)
        objects: list[dict[str, Any]] = []
        for path in approval_paths:
            objects.extend(load_documents(path))
        if namespace_path:
            objects.extend(load_documents(namespace_path))
        trust_text = read_text(trust_path)
        load_trust_store(trust_text)  # an invalid trust store is bad input here: exit 2
        policy_text = read_text(policy_path) if policy_path else None
        snapshot = build_snapshot(trust_text=trust_text, policy_text=policy_text,
                                  objects=objects,
                                  ledger=load_documents(ledger_path) if ledger_path else ())
        if snapshot.policy_error:
            raise ChangeGateError(snapshot.policy_error)
    except ChangeGateError as exc:
        raise _Exit2(str(exc)) from exc
    decision = decide(request, snapshot, now, Context())
    if output == "json":
        click.echo(json.dumps(decision_json(decision, request.uid), indent=2))
    else:
        if decision.allowed:
            click.echo(f"ALLOWED ({decision.outcome}): {decision.code}: {decision.detail}")
        else:
            click.echo(f"DENIED: {decision.code}\n{decision.message}")
        for warning in decision.warnings:
            click.echo(f"Warning: {warning}")
    raise SystemExit(decision.exit_code)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False),
              help="ChangeApproval file (YAML or JSON).")
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def verify(path: str, trust_path: str, output: str) -> None:
    """Explain each signature of a ChangeApproval against a trust store. Exit 1 if any fails."""
    try:
        trust = load_trust_store(read_text(trust_path))
        docs = [d for d in load_documents(path) if d.get("kind") == "ChangeApproval"]
    except ChangeGateError as exc:
        raise _Exit2(str(exc)) from exc
    if not docs:
        raise _Exit2(f"{path}: no ChangeApproval in the file")
    failed = False
    results: list[dict[str, Any]] = []
    for doc in docs:
        obj = ApprovalObject.from_object(doc)
        verified = verify_approval(obj.namespace, obj.spec, trust, allow_service_accounts=False)
        failed = failed or bool(verified.problems) or verified.statement is None
        if output == "json":
            results.append(verification_json(obj, verified))
            continue
        click.echo(f"{obj.namespace}/{obj.name}:")
        for index, result in enumerate(verified.signature_results):
            click.echo(f"  signatures[{index}]: {result}")
        if verified.statement is not None:
            p = verified.statement.predicate
            click.echo(f"  statement: {p.operation} {p.target.kind} {p.target.namespace}/"
                       f"{p.target.name} {p.fromDigest} -> {p.toDigest}")
            click.echo(f"  record: {p.changeRecord.id}  requested by: {p.requestedBy}  "
                       f"expires: {p.expiresAt}")
        click.echo(f"  approvers: {', '.join(sorted(verified.approvers)) or '(none)'}")
        for problem in verified.problems:
            click.echo(f"  problem: {problem.code}: {problem.detail}")
    if output == "json":
        click.echo(json.dumps({"verified": not failed, "approvals": results}, indent=2))
    raise SystemExit(1 if failed else 0)


def verification_json(obj: ApprovalObject, verified: VerifiedApproval) -> dict[str, Any]:
    statement: dict[str, Any] | None = None
    if verified.statement is not None:
        p = verified.statement.predicate
        statement = {"operation": p.operation,
                     "target": {"kind": p.target.kind, "namespace": p.target.namespace,
                                "name": p.target.name},
                     "fromDigest": p.fromDigest, "toDigest": p.toDigest,
                     "changeRecord": p.changeRecord.id, "requestedBy": p.requestedBy,
                     "expiresAt": p.expiresAt}
    return {"namespace": obj.namespace, "name": obj.name,
            "signatures": list(verified.signature_results),
            "statement": statement, "approvers": sorted(verified.approvers),
            "problems": [{"code": x.code, "detail": x.detail} for x in verified.problems]}
