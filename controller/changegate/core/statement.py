"""The signed in-toto Statement of an approval (SPEC §4): build, and parse strictly.

Parsing is deliberately unforgiving: a duplicated key, an unknown field, a second
subject or a foreign type makes the statement invalid. Two parsers that disagree about
ambiguous JSON are how signed-payload confusion attacks start; refusing the ambiguity
closes them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from changegate.core.digest import ABSENT, canonical, hex_of
from changegate.core.errors import StatementError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://changegate.io/change-approval/v1"
DIGEST_ALGORITHM = "k8s-desired-state/v1"
MAX_STATEMENT_BYTES = 16 * 1024

# The gated kinds and how their REST paths name them.
PLURALS: Mapping[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "ConfigMap"): "configmaps",
}

_DIGEST = r"^(none|sha256:[0-9a-f]{64})$"
_NONCE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Target(_Strict):
    apiVersion: str
    kind: str
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    uid: str = Field(min_length=1)


class ChangeRecord(_Strict):
    id: str
    url: str | None = None


class Canary(_Strict):
    replicas: int = Field(default=1, ge=1)
    bakeSeconds: int = Field(default=0, ge=0)


class Rollout(_Strict):
    strategy: Literal["direct", "canary"]
    canary: Canary | None = None


class Predicate(_Strict):
    digestAlgorithm: Literal["k8s-desired-state/v1"]
    cluster: str
    target: Target
    operation: Literal["CREATE", "UPDATE", "DELETE"]
    fromDigest: str = Field(pattern=_DIGEST)
    toDigest: str = Field(pattern=_DIGEST)
    changeRecord: ChangeRecord
    requestedBy: str = Field(min_length=1)
    issuedAt: str
    expiresAt: str
    rollout: Rollout
    nonce: str
    # SPEC §6a: declared by the requester and signed like the rest; the one optional field.
    assistance: Literal["none", "ai"] | None = None

    @field_validator("assistance", mode="before")
    @classmethod
    def _declared(cls, value: Any) -> Any:
        # Absent means undeclared; an explicit null is a second spelling of that, refused.
        if value is None:
            raise ValueError("must be none or ai when present")
        return value


class SubjectDigest(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Subject(_Strict):
    name: str
    digest: SubjectDigest


class Statement(_Strict):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1, max_length=1)
    predicateType: Literal["https://changegate.io/change-approval/v1"]
    predicate: Predicate

    @property
    def issued_at(self) -> datetime:
        return parse_time(self.predicate.issuedAt)

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.predicate.expiresAt)


@functools.lru_cache(maxsize=4096)  # every decision reads each candidate's two times
def parse_time(text: str) -> datetime:
    """RFC 3339 UTC (``Z``) only: one spelling, so signed times compare as strings too."""
    if not _TIME.match(text):
        raise StatementError(f"time {text!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise StatementError(f"time {text!r} is not a valid date: {exc}") from exc


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def subject_name(api_version: str, kind: str, namespace: str, name: str) -> str:
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise StatementError(f"{api_version} {kind} is not a gated kind")
    return f"k8s://{api_version}/namespaces/{namespace}/{plural}/{name}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise StatementError(f"duplicated key {key!r} in the statement")
        seen[key] = value
    return seen


def _reject_constant(token: str) -> None:
    raise StatementError(f"{token} is not JSON")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "statement"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where}"
    if err["type"] == "missing":
        return f"missing field {where}"
    return f"{where}: {err['msg']}"


def parse_statement(raw: bytes) -> Statement:
    """Parse verified statement bytes. Raises StatementError, and nothing else."""
    if len(raw) > MAX_STATEMENT_BYTES:
        raise StatementError(f"statement is {len(raw)} bytes; the limit is {MAX_STATEMENT_BYTES}")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except StatementError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StatementError(f"statement is not JSON ({type(exc).__name__})") from exc
    if not isinstance(doc, dict):
        raise StatementError("statement is not a JSON object")
    if doc.get("_type") != STATEMENT_TYPE and "_type" in doc:
        raise StatementError(f"_type must be {STATEMENT_TYPE}")
    if "predicateType" in doc and doc.get("predicateType") != PREDICATE_TYPE:
        raise StatementError(f"predicateType must be {PREDICATE_TYPE}")
    try:
        statement = Statement.model_validate(doc)
    except ValidationError as exc:
        raise StatementError(f"statement invalid: {_first_error(exc)}") from exc
    _check_consistent(statement)
    return statement


def _check_consistent(st: Statement) -> None:
    p = st.predicate
    parse_time(p.issuedAt)
    parse_time(p.expiresAt)
    # One spelling only: the ledger records nonces as ConfigMap keys, and a spelling it
    # cannot record ("{...}", "urn:uuid:...") would make a statement reusable.
    if not _NONCE.fullmatch(p.nonce):
        raise StatementError("nonce must be a lowercase hyphenated UUID")
    expected = subject_name(p.target.apiVersion, p.target.kind, p.target.namespace, p.target.name)
    subject = st.subject[0]
    if subject.name != expected:
        raise StatementError(f"subject {subject.name!r} does not name the target ({expected})")
    bound = p.fromDigest if p.operation == "DELETE" else p.toDigest
    if bound == ABSENT or subject.digest.sha256 != hex_of(bound):
        raise StatementError("subject digest is not the change's digest")
    if (p.operation == "CREATE") != (p.fromDigest == ABSENT):
        raise StatementError("fromDigest must be 'none' exactly for CREATE")
    if (p.operation == "DELETE") != (p.toDigest == ABSENT):
        raise StatementError("toDigest must be 'none' exactly for DELETE")
    if (p.operation == "CREATE") != (p.target.uid == ABSENT):
        raise StatementError("target.uid must be 'none' exactly for CREATE")


def build_statement(
    *,
    cluster: str,
    target: Mapping[str, str],
    operation: str,
    from_digest: str,
    to_digest: str,
    change_record: Mapping[str, str],
    requested_by: str,
    issued_at: datetime,
    expires_at: datetime,
    rollout: Mapping[str, Any] | None = None,
    nonce: str,
    assistance: str | None = None,
) -> bytes:
    """The statement bytes to sign. Canonical JSON, so the same inputs give the same bytes."""
    bound = from_digest if operation == "DELETE" else to_digest
    predicate: dict[str, Any] = {
        "digestAlgorithm": DIGEST_ALGORITHM,
        "cluster": cluster,
        "target": dict(target),
        "operation": operation,
        "fromDigest": from_digest,
        "toDigest": to_digest,
        "changeRecord": dict(change_record),
        "requestedBy": requested_by,
        "issuedAt": format_time(issued_at),
        "expiresAt": format_time(expires_at),
        "rollout": dict(rollout or {"strategy": "direct"}),
        "nonce": nonce,  # the caller's uuid4: nothing random inside the pure core
    }
    if assistance is not None:  # absent, not null: an undeclared statement says nothing
        predicate["assistance"] = assistance
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": subject_name(
                    target["apiVersion"], target["kind"], target["namespace"], target["name"]
                ),
                "digest": {"sha256": hex_of(bound)},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    raw = canonical(doc)
    parse_statement(raw)  # never hand out bytes our own parser would refuse
    return raw
