"""`changegate approve`: review and sign, on the cluster or offline on a file (GitOps).

Everything is checked before anything is signed, and a record's approvals are signed all
or none: with atomic records the release goes in whole, so half a signature set is noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from changegate.cli.workflow_common import (
    Session,
    color_enabled,
    kube_options,
    load_signing_key,
)
from changegate.core.approval import manifest_digest, verify_approval
from changegate.core.compose import statement_bytes
from changegate.core.digest import DEFAULT_RULES
from changegate.core.dsse import PAYLOAD_TYPE, PrivateKey, b64decode, pae, sign_envelope
from changegate.core.errors import ChangeGateError
from changegate.core.policy import Policy, load_policy
from changegate.core.senior import automation_users, senior_problem, why_senior
from changegate.core.statement import Statement
from changegate.core.trust import TrustStore
from changegate.files import load_documents, read_text
from changegate.workflow.approvals import (
    append_signature,
    check_produces,
    get_approval,
    list_approvals,
    live_state,
    statement_of,
)
from changegate.workflow.show import describe_statement, unified_diff
from changegate.workflow.site import load_trust
from changegate.workflow.writes import meta


@dataclass
class Review:
    obj: dict[str, Any]
    statement: Statement
    problems: list[str]
    already: bool = False

    @property
    def label(self) -> str:
        m = meta(self.obj)
        return f"{m.get('namespace')}/{m.get('name')}"


def signed_by(obj: dict[str, Any], key: PrivateKey) -> bool:
    """Whether a signature in ``obj`` already verifies with this key."""
    message = pae(PAYLOAD_TYPE, statement_bytes(obj))
    for entry in (obj.get("spec") or {}).get("signatures") or []:
        try:
            if key.public.verify(b64decode(str(entry.get("sig", ""))), message):
                return True
        except (ValueError, AttributeError):
            continue
    return False


def key_problems(key: PrivateKey, trust: TrustStore | None, st: Statement, signer: str
                 ) -> list[str]:
    """Refusals the webhook would make about this key anyway; said before signing."""
    p = st.predicate
    problems: list[str] = []
    if signer == p.requestedBy:
        return [f"you ({signer}) requested this change: approvers other than the requester "
                "must sign it"]
    if trust is None:
        return problems
    entry = trust.by_keyid(key.public.keyid)
    if entry is None:
        problems.append(f"your key {key.public.keyid} is not in the trust store, so the "
                        "webhook would not count this signature (ask a policy admin to add "
                        "the entry `changegate keygen` printed)")
        return problems
    owner = entry.approver
    if owner.name == p.requestedBy and signer != p.requestedBy:
        problems.append(f"the key belongs to {owner.name}, who requested this change")
    elif owner.role != "approver":
        problems.append(f"the key is {owner.name}'s {owner.role} key; it cannot approve")
    elif not owner.may_approve_in(p.target.namespace):
        problems.append(f"{owner.name} may not approve in namespace {p.target.namespace}")
    return problems


def senior_note(policy: Policy, trust: TrustStore | None, review: Review, signer: str) -> str:
    """SPEC §6a, for the person about to sign: whether the change waits for a senior
    signature, and whether theirs is it."""
    if trust is None:
        return ""
    m = meta(review.obj)
    verified = verify_approval(str(m.get("namespace", "")), review.obj.get("spec") or {},
                               trust, allow_service_accounts=policy.allowServiceAccountApprovers,
                               automation=automation_users(policy))
    waiting = senior_problem(policy, trust, review.statement, verified.approvers)
    if waiting is None:
        return ""
    why = why_senior(policy, review.statement)
    if signer in trust.seniors() and signer not in policy.automation.users:
        after = senior_problem(policy, trust, review.statement, verified.approvers | {signer})
        if after is None:
            return (f"{why}: yours is the senior signature this change waits for "
                    "(you are senior in the trust store)")
        return f"{why}: yours counts as a senior signature; still short after it: {after.detail}"
    return f"{why}, and still waits for a senior signature (yours is not one): {waiting.detail}"


def _review(session: Session, obj: dict[str, Any], key: PrivateKey, trust: TrustStore | None,
            signer: str, now: Any) -> Review:
    st = statement_of(obj)
    review = Review(obj, st, key_problems(key, trust, st, signer), signed_by(obj, key))
    if review.problems or review.already:
        return review
    owed = (obj.get("status") or {}).get("review")
    if isinstance(owed, dict):
        # A review owed (SPEC §7a): its change already happened and its nonce is used, so
        # there is nothing to apply or dry-run and its expiry does not matter: show why it
        # is owed and what the object became.
        click.echo(f"ChangeApproval {review.label}: review owed for a {owed.get('reason')} "
                   f"change since {owed.get('owedSince')}: {owed.get('detail') or '-'}")
        click.echo(describe_statement(st), nl=False)
        return review
    if now >= st.expires_at:
        review.problems.append(f"it expired at {st.predicate.expiresAt}")
        return review
    live = live_state(session.api, session.site, st)
    problems, _ = check_produces(session.api, session.site, obj, st, live)
    review.problems.extend(problems)
    t = st.predicate.target
    click.echo(f"ChangeApproval {review.label}")
    click.echo(describe_statement(st), nl=False)
    auto = t.kind == "Deployment" and session.site.autoscaled(session.api, t.namespace, t.name)
    manifest = (obj.get("spec") or {}).get("manifest") if st.predicate.operation != "DELETE" \
        else None
    click.echo(unified_diff(live.obj, manifest, f"{t.kind.lower()}/{t.name}",
                            session.site.rules, autoscaled=auto, color=color_enabled()), nl=False)
    return review


@click.command()
@click.argument("name", required=False)
@click.option("--record", help="Sign every ChangeApproval of this change record in the namespace.")
@click.option("-f", "--filename", "file", type=click.Path(dir_okay=False),
              help="Sign a ChangeApproval file offline and write it back (GitOps).")
@click.option("--key", "key_path", envvar="CHANGEGATE_KEY", show_default=True,
              default=str(Path("~/.config/changegate/signing.key").expanduser()),
              type=click.Path(dir_okay=False),
              help="Your private key: PEM (Ed25519, P-256) or OpenSSH ed25519 "
                   "($CHANGEGATE_KEY; the default is where `changegate keygen` writes it).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False),
              help="With -f: the policy file, for its digest rules.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@kube_options
def approve(session: Session, name: str | None, record: str | None, file: str | None,
            key_path: str, policy_path: str | None, yes: bool) -> None:
    """Review a ChangeApproval (statement, record, diff, checks) and sign it.

    NAME signs one; --record signs all of a record's approvals in the namespace at once
    (all or none); -f signs a file offline after checking its manifest has its toDigest.
    """
    if sum(x is not None for x in (name, record, file)) != 1:
        raise click.UsageError("give one of NAME, --record ID or -f FILE")
    if file is not None:
        _approve_file(file, key_path, policy_path, yes)
    else:
        _approve_cluster(session, name, record, key_path, yes)


def _approve_cluster(session: Session, name: str | None, record: str | None, key_path: str,
                     yes: bool) -> None:
    key = load_signing_key(key_path)
    api = session.api
    signer, now = api.whoami()
    trust, _ = load_trust(api, session.controller_namespace)
    if name is not None:
        objs = [get_approval(api, session.namespace, name)]
    else:
        objs = list_approvals(api, session.namespace, record)
        if not objs:
            raise ChangeGateError(f"no ChangeApproval of record {record} in namespace "
                                  f"{session.namespace}")
    reviews = [_review(session, obj, key, trust, signer, now) for obj in objs]
    for r in reviews:
        if r.already:
            click.echo(f"{r.label}: already signed with this key")
    problems: dict[str, list[str]] = {}  # one line per problem, naming the approvals it hits
    for r in reviews:
        for problem in r.problems:
            problems.setdefault(problem, []).append(r.label)
    if problems:
        raise ChangeGateError("refusing to sign (nothing was signed): " + "; ".join(
            f"{text} ({', '.join(labels)})" for text, labels in problems.items()))
    todo = [r for r in reviews if not r.already]
    if not todo:
        return
    if any(not isinstance((r.obj.get("status") or {}).get("review"), dict) for r in todo):
        click.echo("checks passed: each manifest has its toDigest, each live object is at its "
                   "fromDigest, a dry-run still produces toDigest")
    policy = session.site.policy or Policy()
    for r in todo:
        note = senior_note(policy, trust, r, signer)
        if note:
            click.echo(f"{r.label}: {note}")
    if not yes and not click.confirm(f"Sign {len(todo)} ChangeApproval(s) as {signer} "
                                     f"(key {key.public.keyid[:19]}...)?", err=True):
        raise ChangeGateError("not signed")
    for r in todo:
        m = meta(r.obj)
        signature = sign_envelope(key, statement_bytes(r.obj))
        retries = append_signature(api, str(m["namespace"]), str(m["name"]), signature)
        note = f" after {retries} concurrent update(s)" if retries else ""
        click.echo(f"signed changeapproval/{m['name']} in {m['namespace']}{note}")


def _approve_file(path: str, key_path: str, policy_path: str | None, yes: bool) -> None:
    """Offline: no live object and no dry-run, so the one check is the manifest's digest."""
    rules = load_policy(read_text(policy_path)).view_rules if policy_path else DEFAULT_RULES
    docs = load_documents(path)
    approvals = [d for d in docs if d.get("kind") == "ChangeApproval"]
    if not approvals:
        raise ChangeGateError(f"{path}: no ChangeApproval in the file")
    key = load_signing_key(key_path)
    for obj in approvals:
        st = statement_of(obj)
        p = st.predicate
        if p.operation != "DELETE":
            got = manifest_digest(obj.get("spec") or {}, rules, False)
            # Offline there is no HPA to look at: a Deployment's request whose digest left
            # replicas out (autoscaled) is recognised by its digest. The webhook checks
            # again at create, against the cluster's HPAs.
            if got != p.toDigest and p.target.kind == "Deployment" and \
                    manifest_digest(obj.get("spec") or {}, rules, True) == p.toDigest:
                click.echo(f"{meta(obj).get('name')}: autoscaled, replicas are not part of "
                           "what you sign")
                got = p.toDigest
            if got != p.toDigest:
                raise ChangeGateError(f"{path}: {meta(obj).get('name')}: the manifest's digest "
                                      f"is {got}, not toDigest {p.toDigest}: refusing to sign")
        click.echo(f"ChangeApproval {meta(obj).get('namespace')}/{meta(obj).get('name')}")
        click.echo(describe_statement(st), nl=False)
    if not yes and not click.confirm(f"Sign {len(approvals)} ChangeApproval(s) in {path}?",
                                     err=True):
        raise ChangeGateError("not signed")
    for obj in approvals:
        if signed_by(obj, key):
            continue
        spec = obj.setdefault("spec", {})
        spec["signatures"] = [*(spec.get("signatures") or []),
                              sign_envelope(key, statement_bytes(obj))]
    _write_back(path, docs)
    click.echo(f"signed {len(approvals)} ChangeApproval(s) in {path}")


def _write_back(path: str, docs: list[dict[str, Any]]) -> None:
    target = Path(path)
    if target.suffix == ".json":
        body: Any = docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List",
                                                     "items": docs}
        text = json.dumps(body, indent=2) + "\n"
    else:
        text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
    tmp = target.with_name(f".{target.name}.changegate-tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)  # atomic: a crash never leaves half a file in Git
